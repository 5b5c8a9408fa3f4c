/*
 * CPR: declarations shared by the files of migration/cpr*.c
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef MIGRATION_CPR_INTERNAL_H
#define MIGRATION_CPR_INTERNAL_H

#include "qemu/coroutine.h"
#include "qapi/qapi-types-cpr.h"
#include "qapi/qapi-types-run-state.h"
#include "migration/cpr.h"
#include "migration/vmstate.h"
#include "sysemu/reset.h"

/* One RAM block as recorded in a state file */
typedef struct CprRamEntry {
    char *idstr;
    uint32_t idstr_len;         /* with its NUL */
    uint64_t used_length;
    uint64_t max_length;
    uint64_t file_offset;       /* reboot: where its pages are, or 0 */
    bool in_backend;            /* reboot: its pages are in its backend */
    bool own;                   /* fork: not given, each child has its own */
} CprRamEntry;

/*
 * A state file's envelope starts with a prefix of 28 bytes (big-endian):
 * magic (8), version (4), mode (4), the envelope's length (8, at offset
 * 16) and its header's (4); it ends with the CRC-32 of the rest (4)
 */
#define CPR_FILE_PREFIX 28

/* The header of a state file (cpr-file.c); vmstate "cpr-file" */
typedef struct CprFile {
    CprMode mode;
    uint32_t machine_len;       /* with its NUL */
    char *machine;
    int32_t nr_ram;
    CprRamEntry *ram;
    uint64_t file_size;         /* reboot: size with the pages of RAM */
    /* A file read by cpr_file_read(): its checked envelope */
    char *path;
    uint8_t *data;
    size_t len;
    size_t devices_offset;      /* device state stream within data */
    size_t devices_len;
} CprFile;

/* What a mode adds to the state file (NULL: nothing, restart) */
typedef struct CprFileOps {
    /* Place what follows the envelope of @envelope bytes */
    void (*layout)(CprFile *cf, size_t envelope);
    /* Write it into @fd (the file, still under its temporary @tmp) */
    bool (*write)(CprFile *cf, const char *tmp, int fd, Error **errp);
    /* fsync the file and its directory */
    bool durable;
} CprFileOps;

CprFile *cpr_file_new(CprMode mode);
size_t cpr_file_envelope_size(CprFile *cf, size_t devices_len);
GByteArray *cpr_file_envelope(CprFile *cf, GByteArray *devices);
bool cpr_file_write(const char *path, CprMode mode, const CprFileOps *ops,
                    Error **errp);
CprFile *cpr_file_read(const char *path, Error **errp);
/*
 * The steps of cpr_file_write: create @path's temporary file (0600; its
 * name in @tmp), write into it, then rename it into place (made durable
 * first if @durable; @fd closed, the temporary file gone on failure) or
 * discard it
 */
int cpr_file_create(const char *path, char **tmp, Error **errp);
bool cpr_file_pwrite(int fd, const uint8_t *p, size_t len, off_t off);
bool cpr_file_commit(int fd, const char *tmp, const char *path, bool durable,
                     Error **errp);
void cpr_file_discard(int fd, const char *tmp);
/*
 * Transfer mode: the envelope of this VM's state (no RAM) in memory, and
 * the checked CprFile of one received under @name (takes @b)
 */
GByteArray *cpr_file_save(CprMode mode, Error **errp);
CprFile *cpr_file_parse(const char *name, GByteArray *b, Error **errp);
bool cpr_file_load_devices(CprFile *cf, Error **errp);
void cpr_file_free(CprFile *cf);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(CprFile, cpr_file_free)

/* cpr-devices.c: the device and CPU state stream of every mode */

/*
 * Before device state is saved: record the run state for whoever loads
 * it, stop the vCPUs in @state if they run, flush block devices.  A VM
 * that was running is resumed with vm_start() by the caller.
 */
bool cpr_stop(RunState state, Error **errp);

/*
 * Before a transfer's pause, so that it is not in it: make and fault in
 * the buffer the next save writes into / use once what a load goes
 * through (buffer channel, QEMU file)
 */
void cpr_devices_prepare_save(void);
void cpr_devices_prepare_load(void);
/*
 * An empty array with room for @size bytes, for a state envelope made or
 * received: the one prepared for it if that is large enough
 */
GByteArray *cpr_devices_buffer(size_t size);

/* Append @opaque as @vmsd's record to @b, / load it from @data */
void cpr_vmstate_save(const VMStateDescription *vmsd, void *opaque,
                      GByteArray *b);
bool cpr_vmstate_load(const VMStateDescription *vmsd, void *opaque,
                      const uint8_t *data, size_t len);

/*
 * cpr-exclude.c: what the restores of a snapshot leave as it is: named
 * memory backends, named devices (and those on their buses: their RAM
 * blocks and their state), shared RAM with @ignore_shared
 */
typedef struct CprExclude CprExclude;
typedef struct CprPlan CprPlan;
CprExclude *cpr_exclude_new(strList *ids, bool ignore_shared, Error **errp);
void cpr_exclude_free(CprExclude *x);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(CprExclude, cpr_exclude_free)
/* The ids it was made from */
strList *cpr_exclude_ids(CprExclude *x);
bool cpr_exclude_has_block(CprExclude *x, RAMBlock *rb);
bool cpr_exclude_has_devices(CprExclude *x);
bool cpr_exclude_ignores_shared(CprExclude *x);
/* For cpr_save_devices_some(): sections kept / sections saved */
bool cpr_exclude_keeps(void *opaque, void *x);
bool cpr_exclude_saves(void *opaque, void *x);
/* At a restore: the kept devices' state as it is now */
GByteArray *cpr_exclude_save_kept(CprExclude *x, Error **errp);
/*
 * The named devices are all still there, their INTx as at the snapshot;
 * the sections to leave out
 */
bool cpr_exclude_check(CprExclude *x, Error **errp);

/*
 * cpr-snapshot-disks.c: an overlay over each disk a device can write,
 * emptied at each restore.  prepare: before the VM stops for the
 * snapshot, the migration blocker the overlays need (its own: a snapshot
 * is not blocked by it); add: with the VM stopped, the overlays (NULL
 * and errp set if none could be made); empty: at a restore.
 */
bool cpr_snapshot_disks_prepare(Error **errp);
/* The snapshot was not taken: the blocker goes if no overlay exists */
void cpr_snapshot_disks_unprepare(void);
bool cpr_snapshot_disks_blocker_is(Error *err);
GPtrArray *cpr_snapshot_disks_add(Error **errp);
bool cpr_snapshot_disks_empty(GPtrArray *disks, Error **errp);

/*
 * The stream, or NULL with errp set / load it from @data; @cpu_ns, if
 * not NULL, gets the time spent putting the CPUs' state back into the
 * accelerator.
 */
GByteArray *cpr_save_devices(Error **errp);
/*
 * The stream of the sections whose opaque @want accepts; with
 * @sync_cpus, the CPUs' state is read from the accelerator first (for a
 * stream with CPUs in it).
 */
GByteArray *cpr_save_devices_some(bool (*want)(void *opaque, void *arg),
                                  void *arg, bool sync_cpus, Error **errp);
bool cpr_load_devices(const uint8_t *data, size_t len, int64_t *cpu_ns,
                      Error **errp);
/*
 * Before a load: if an earlier one failed half-way through the devices,
 * reset the machine, so that every device loads into its reset state.
 * Call it before guest RAM is loaded (a reset rewrites ROMs).
 */
void cpr_load_devices_prepare(void);
/*
 * Put this machine back into a saved state without leaving the process
 * (a snapshot restore, a fork reset): reset it, let @ram put guest RAM
 * back (returning the pages it did; again after the load with
 * @after_load), load the device state stream @data; times in @t
 */
typedef uint64_t CprRestoreRamFn(void *opaque, bool after_load);
typedef struct CprRestoreTimes {
    uint64_t pages;
    int64_t reset_ns;           /* part of devices_ns */
    int64_t ram_ns;
    int64_t cpu_ns;
    int64_t devices_ns;         /* the rest */
    bool replayed;              /* the device state came from a plan */
} CprRestoreTimes;
/*
 * @exclude (or NULL): devices whose state goes on as it is.  @plan (or
 * NULL): the restore plan of @data; when it holds one that can be used
 * (and the machine property cpr-restore-plan is on), the devices' state
 * is put back by replaying it, else from @data, recording a new plan
 * into it.
 */
bool cpr_restore_machine(const uint8_t *data, size_t len,
                         CprRestoreRamFn *ram, void *opaque,
                         CprExclude *exclude, CprPlan **plan,
                         CprRestoreTimes *t, Error **errp);
/*
 * cpr-restore-plan.c: what loading a device state stream did, to do it
 * again without the stream.  record_start: record the load of @stream
 * (after its header) that follows; record_end: stop, and say whether the
 * plan covers the whole stream and can be used; usable: no device came
 * or went since; replay: load the devices' state again from the plan.
 */
CprPlan *cpr_plan_new(void);
void cpr_plan_free(CprPlan *p);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(CprPlan, cpr_plan_free)
void cpr_plan_record_start(CprPlan *p, const uint8_t *stream, size_t len);
bool cpr_plan_record_end(CprPlan *p, bool loaded);
bool cpr_plan_usable(CprPlan *p);
/*
 * Replays of plans of this stream failed CPR_PLAN_MAX_FAILURES times in
 * a row (the plan recorded after the last is kept to say so), and no
 * device came or went since: restores load the stream
 */
bool cpr_plan_given_up(CprPlan *p);
unsigned cpr_plan_failures(CprPlan *p);
void cpr_plan_set_failures(CprPlan *p, unsigned failures);
bool cpr_plan_replay(CprPlan *p, Error **errp);
/*
 * The machine reset before the load, recorded (only from a reset that
 * goes through what a reset recorder sees) and replayed: the same
 * functions on the same objects in the same order, no tree walked
 */
void cpr_plan_reset_record_start(CprPlan *p);
void cpr_plan_reset_record_end(CprPlan *p);
bool cpr_plan_reset_usable(CprPlan *p);
void cpr_plan_reset_replay(CprPlan *p);
/*
 * Whether the machine reset's @step is redundant before a load of the
 * snapshot's device state, which then leaves it out
 * (cpr-reset-redundant.c); *@type is then its device's QOM type
 */
bool cpr_reset_step_redundant(const ResetStep *step, const char **type);
CprRestorePlanInfo *cpr_plan_info(CprPlan *p);

/* A QEMUFile reading @data where it is; cpr_buffer_input_close() ends it */
QEMUFile *cpr_buffer_input(const uint8_t *data, size_t len);
void cpr_buffer_input_close(QEMUFile *f);

/* The name of the section of a device state stream that holds byte @at */
char *cpr_devices_section_at(const uint8_t *data, size_t len, size_t at);

/* cpr-ram.c */
/* Fill @cf's RAM table with this VM's migratable RAM blocks */
void cpr_ram_describe(CprFile *cf);
/*
 * The RAM blocks of @cf and this VM match; with @kept, each one's memory
 * was also kept across execve.
 */
bool cpr_ram_check(CprFile *cf, bool kept, Error **errp);
/* Give each RAM block the used size @cf has */
bool cpr_ram_resize(CprFile *cf, Error **errp);
/* cprload succeeded: forget which blocks were kept */
void cpr_ram_load_done(void);
/* Blocks @mode (restart, transfer): RAM another process cannot have */
void cpr_ram_add_blockers(CprBlockerList ***tail, CprMode mode);

/* cpr-ram-move.c: anonymous guest RAM moved into memfds by cprsave */
/* Some RAM block is anonymous memory restart and transfer must move */
bool cpr_ram_move_needed(void);
/* Give each such block a memfd (in a coroutine: QMP's cprsave) */
bool cpr_ram_move_start(Error **errp);
/*
 * While the VM runs: copy each block into its memfd until few pages are
 * dirtied between passes (waits); the vCPUs stay throttled if the guest
 * dirtied them too fast, until finish or abort
 */
bool coroutine_fn cpr_ram_move_copy_all(Error **errp);
/* cprsave is moving RAM (and owns the migration dirty log) */
bool cpr_ram_move_active(void);
/* The memfd @rb is being moved into, or -1 */
int cpr_ram_move_fd(RAMBlock *rb);
/*
 * The VM is stopped: copy the last dirty pages and map each memfd over
 * its block.  On failure, blocks not moved yet stay as they were.
 */
bool cpr_ram_move_finish(Error **errp);
/* Give up a move not finished (the blocks stay anonymous) */
void cpr_ram_move_abort(void);
/* The VM resumes here: unmap the anonymous memory the move put aside */
void cpr_ram_move_release(void);

/*
 * VM fork: the memfds children map, under their names and ids (names
 * NULL-ended): a parent's own, or a child's layers (cpr_ram_fork_delta)
 */
typedef struct CprForkRam {
    GPtrArray *names;
    GArray *ids;
    GArray *fds;
} CprForkRam;
void cpr_ram_fork_fds(CprForkRam *r);
/* The RAM blocks a fork parent keeps to itself (cpr-fork's exclude) */
void cpr_ram_fork_exclude(CprExclude *x);
/* A child forked: its own pages become a layer for its children */
bool cpr_ram_fork_delta(Error **errp);
/* The parent maps its own RAM copy-on-write: the memfds keep the fork point */
bool cpr_ram_fork_private(Error **errp);
/*
 * A child of a checkpoint or reboot-mode file @cf: map its pages of each
 * RAM block copy-on-write from @fd over this VM's
 */
bool cpr_ram_fork_map_file(CprFile *cf, int fd, Error **errp);
/*
 * A child drops what it wrote: the fork point shows through again;
 * returns the pages dropped
 */
uint64_t cpr_ram_fork_drop_private(void);

/* cpr-fork.c */
bool cpr_fork_is_child(void);
void cpr_fork_incoming(const char *channel, Error **errp);

/* CPR state entry: the state file a restarted process loads by itself */
#define CPR_AUTO_LOAD_NAME "cpr-auto-load"

/* The arguments of cprsave that reach a mode */
typedef struct CprSaveArgs {
    const char *file;           /* or NULL */
    const char *binary;         /* or NULL */
    bool auto_load;
    const char *channel;        /* or NULL */
    int channel_fd;             /* connected already (relay), or -1 */
    bool relay;                 /* restart through a relay process */
    GByteArray *state;          /* without a file: the saved state */
} CprSaveArgs;

/* A mode of cprsave: the hooks of cpr-<mode>.c around the common path */
typedef struct CprModeOps {
    CprMode mode;
    RunState stop_state;        /* of a running VM while it is saved */
    bool resume_on_error;       /* a failed save resumes a running VM */
    bool has_binary;            /* takes cprsave's 'binary' */
    bool has_auto_load;         /* takes cprsave's 'auto-load' */
    /* takes 'channel' instead of 'file': the state is saved in memory */
    bool has_channel;
    const CprFileOps *file;     /* what the state file has besides devices */
    /* Add what blocks the mode (cpr_add_blocker) */
    void (*blockers)(CprBlockerList ***tail);
    /* Checked before the VM is touched */
    bool (*check)(const CprSaveArgs *args, Error **errp);
    /*
     * Before the VM is stopped, while it runs (in coroutine context when
     * cprsave came over QMP); false (errp set) if that failed
     */
    bool coroutine_fn (*prepare)(const CprSaveArgs *args, Error **errp);
    /*
     * After the state is saved (NULL: nothing, the VM stays stopped);
     * false (errp set) if that failed
     */
    bool (*finish)(const CprSaveArgs *args, Error **errp);
    /* The save failed after prepare succeeded: undo what it did */
    void (*abandon)(void);
    /* After a failed save: false if the VM must stay stopped (NULL: true) */
    bool (*can_resume)(void);

    /* cprload */
    /* Whether this process can load a file of the mode now */
    bool (*load_pending)(void);
    /* Guest RAM was kept across execve, not written into the file */
    bool ram_kept;
    /* Put guest RAM back from the file (NULL: it was kept) */
    bool (*load_ram)(CprFile *cf, Error **errp);
    /*
     * Device state is loaded and the images are active: before the VM's
     * run state is restored
     */
    void (*loaded)(void);
    /* -S keeps a VM saved running paused, as after a migration */
    bool obeys_autostart;
    /* The VM is back in its run state: what the mode lets go of */
    void (*load_done)(void);
    /* Why a file of another mode cannot be loaded here (after its mode) */
    const char *other_mode_hint;
    /* At the end of start-up: load a file without cprload, if asked to */
    void (*started)(void);
} CprModeOps;

extern const CprModeOps cpr_restart_ops;
extern const CprModeOps cpr_reboot_ops;
extern const CprModeOps cpr_transfer_ops;
extern const CprModeOps cpr_fork_ops;
extern const CprModeOps cpr_checkpoint_ops;

/* No blocker of @mode, the VM running or paused, no migration or save */
bool cpr_mode_allowed(CprMode mode, Error **errp);

/*
 * Load the checked state @cf for mode @mode; on success the VM is back in
 * its run state.  A failure leaves the VM paused, ready for another load.
 */
bool cpr_load_state(CprMode mode, CprFile *cf, Error **errp);
/* After a load: the run state the VM was saved in / put the VM in @state */
RunState cpr_saved_runstate(void);
void cpr_enter_runstate(RunState state);

/* cpr-transfer.c: in a process started with -incoming cpr:CHANNEL */
void cpr_transfer_incoming(const char *channel, Error **errp);

/* cpr-relay.c: cprsave restart through a relay process */
/* Start the new binary as the relay; this process's end of its socket */
int cpr_relay_spawn(const char *binary, Error **errp);
/* The relay took the VM: execute the new binary here to take it back */
void G_GNUC_NORETURN cpr_relay_exec(int fd, const char *binary);
/* Mark the state sent with the leg (@to the relay, or back), or unmark */
void cpr_relay_mark(bool to, bool keep);
/* A process taking the VM: which leg it is on, from the received state */
void cpr_relay_incoming(void);
/* Taking the VM on a leg of a relay: run it as it was, ignoring -S */
bool cpr_relay_leg_incoming(void);
/*
 * The relay has taken the VM and runs it: hand it back over @fd, or, with
 * @fd -1, keep it because of @err (taken)
 */
void cpr_relay_loaded(int fd, Error *err);
/* cpr.c: the relay's transfer back over @fd, in a coroutine */
bool coroutine_fn cpr_save_relay_back(int fd, Error **errp);

/* cpr-channel.c: the socket of transfer mode */
typedef enum CprMsg {
    CPR_MSG_STATE = 1,          /* old to new: the CPR state */
    CPR_MSG_FDS,                /* old to new: its descriptors, in order */
    CPR_MSG_READY,              /* new to old: its start-up is done */
    CPR_MSG_DEVICES,            /* old to new: the state envelope */
    CPR_MSG_COMMIT,             /* new to old: it has taken the VM */
    CPR_MSG_ERROR,              /* new to old: it refused; why */
} CprMsg;
/* Descriptors in one message */
#define CPR_CHANNEL_MAX_FDS 200

/*
 * Connect to "unix:PATH" / listen there and accept one peer, or take the
 * connected socket N of "fd:N" this process was started with
 */
int cpr_channel_connect(const char *channel, Error **errp);
int cpr_channel_accept(const char *channel, Error **errp);
/*
 * The CPR state @state (a registry, cpr-state.c) and its descriptors
 * @fds, in order / received and taken as this process's incoming state
 * (cpr_state_receive() with @transfer): the number of descriptors, or -1
 */
bool cpr_channel_send_state(int fd, GByteArray *state, GArray *fds,
                            Error **errp);
int cpr_channel_recv_state(int fd, bool transfer, Error **errp);
/* Listen on "unix:PATH" (renamed there once it listens) / accept on it */
int cpr_channel_listen(const char *channel, int backlog, Error **errp);
int cpr_channel_accept_one(int lfd, const char *what, Error **errp);
bool cpr_channel_send(int fd, CprMsg type, const void *data, size_t len,
                      const int *fds, size_t nfds, Error **errp);
/*
 * Receive the next message, which must be of @type: its payload into
 * @data, its descriptors into @fds (NULL: it must have none).  An error
 * message from the peer, the end of file or anything else is an error.
 */
bool cpr_channel_recv(int fd, CprMsg type, GByteArray **data, GArray **fds,
                      Error **errp);
/*
 * Poll @fd without sleeping for at most @max_ns, until it is readable:
 * for a message that comes within a millisecond or two, on which the
 * pause waits, a sleeping thread would add its wake-up to the pause
 */
void cpr_channel_spin(int fd, int64_t max_ns);
/*
 * Wait in a coroutine until @fd is readable, the main loop running;
 * cpr_channel_co_cancel() ends the wait of coroutine @co early
 */
void coroutine_fn cpr_channel_co_wait(int fd);
void cpr_channel_co_cancel(int fd, Coroutine *co);

/* cpr-hooks.c: what subsystems registered */
bool cpr_notify(CprEvent event, Error **errp);
/* Let every keeper (un)register its descriptors (cpr_notify does too) */
void cpr_run_keepers(bool keep);
void cpr_set_saving(bool saving);
/* Blockers from devices, migration blockers and blocker functions */
void cpr_hooks_add_blockers(CprBlockerList ***tail);

/* cpr-binary.c: @path is a binary that can take this VM over */
bool cpr_binary_check(const char *path, Error **errp);

/*
 * cpr-step.c: this process reaches step @name of an update (a trace
 * event; a stop there for tests: CPR_STOP_AT_ENV)
 */
#define CPR_STOP_AT_ENV "QEMU_CPR_STOP_AT"
void cpr_step(const char *name);

/* cpr-mm.c */
bool cpr_mm_prepare(Error **errp);
pid_t cpr_mm_start(Error **errp);
void cpr_mm_release(pid_t pid);
void cpr_mm_done(void);
void cpr_mm_incoming(pid_t pid);
/* Hold termination signals back across execve / take them again */
void cpr_mm_block_term(void);
void cpr_mm_unblock_term(void);

/* cpr-reboot.c: what a checkpoint (cpr-checkpoint.c) writes as reboot does */
/* Place every RAM block after the envelope, none left in its backend */
void cpr_reboot_layout_copy(CprFile *cf, size_t envelope);
/*
 * Write the pages of @rb from @start to @end (page aligned) that are
 * neither zero nor set in the page bitmap @skip (or NULL) into @fd (or
 * the same file opened with O_DIRECT, @direct_fd, if not -1), where
 * @rb's page 0 is at @file_offset; add what was written to @bytes;
 * 0 or -errno
 */
int cpr_reboot_write_range(int fd, int direct_fd, RAMBlock *rb,
                           uint64_t start, uint64_t end, uint64_t file_offset,
                           const unsigned long *skip, uint64_t *bytes);

/* cpr-snapshot.c */
CprSnapshotInfo *cpr_snapshot_info(void);

/* cpr-checkpoint.c: the checkpoint being written or the last one, or NULL */
CprCheckpointInfo *cpr_checkpoint_info(void);

/* cpr-state.c */
/* The layout of the registry; cpr-binary.c marks the binary with it */
#define CPR_STATE_VERSION 4
/* Read the state a cprsave restart left for this process, if any */
void cpr_state_init(int argc, char **argv, Error **errp);
pid_t cpr_state_get_helper(void);
bool cpr_state_set_helper(pid_t pid, Error **errp);
/*
 * Transfer mode: the registry as it goes over the channel, and its
 * descriptors in the order they go with it
 */
GByteArray *cpr_state_serialize(void);
GArray *cpr_state_outgoing_fds(void);
/*
 * Take the registry @p and the descriptors @fds (this process's); with
 * @transfer, this process takes the VM over (else it is a fork child)
 */
bool cpr_state_receive(const uint8_t *p, size_t len, GArray *fds,
                       bool transfer, Error **errp);
/* The registry of @fds alone, each under @names[i] and @ids[i] */
GByteArray *cpr_state_serialize_fds(char **names, GArray *ids, GArray *fds);
/* CHANNEL of "-incoming cpr-fork:CHANNEL", or NULL */
const char *cpr_state_fork_channel(void);
/* The incoming state came over a transfer channel */
bool cpr_state_transferred(void);
/* CHANNEL of "-incoming cpr:CHANNEL", or NULL */
const char *cpr_state_incoming_channel(void);
/* After cpr_state_exec_prepare(): the descriptors execve will close */
GArray *cpr_state_exec_closing_fds(void);
void cpr_forget_fd(const char *name, int id);

#endif
