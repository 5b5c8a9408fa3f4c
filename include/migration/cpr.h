/*
 * CPR (checkpoint and restart): live update of QEMU by execve
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * This is the interface other subsystems use.  A subsystem that owns a
 * descriptor which must stay open across the execve of a new QEMU binary
 * registers it under a name and an id; the new process looks the
 * descriptor up under the same name and id instead of opening a new one.
 */

#ifndef MIGRATION_CPR_H
#define MIGRATION_CPR_H

#include "exec/cpu-common.h"
#include "qemu/notify.h"
#include "qapi/qapi-builtin-types.h"
#include "qapi/qapi-types-cpr.h"

/* Environment variable naming the inherited descriptor of the CPR state */
#define CPR_STATE_ENV "QEMU_CPR_STATE"
/* Set when the old binary takes the VM back after a failed restart */
#define CPR_RECOVERY_ENV "QEMU_CPR_RECOVERY"

/* cpr-state.c: the registry of descriptors that cross execve */

/*
 * cpr_init: record how this process was started and, if it was started by
 * "cprsave restart", read the CPR state its predecessor left behind.
 * Called once, early in qemu_init(), before any backend is created.
 */
void cpr_init(int argc, char **argv, Error **errp);

/*
 * cpr_started: the end of start-up, once the machine is created and
 * reset.  A process started by "cprsave restart" with auto-load loads
 * its state file here.
 */
void cpr_started(void);

/*
 * A process started by "cprsave restart" with auto-load answers cprsave
 * only once that load has ended.  The monitor holding the answer calls
 * cpr_auto_load_wait() in the main thread when it is created, before
 * cpr_started(): @fn gets the load's error, or NULL, when the load ends.
 * Returns false, without calling @fn, if no such load is coming: answer
 * now.
 */
typedef void CprAutoLoadFn(void *opaque, Error *err);
bool cpr_auto_load_wait(CprAutoLoadFn *fn, void *opaque);

/*
 * In a process taking a VM over from another with cprsave "transfer",
 * which runs it until this one has loaded its state, what must not touch
 * the descriptors both share before then (the monitor I/O thread polling
 * a kept QMP connection or listener) waits: cpr_transfer_defer() runs
 * @fn(@opaque) in the main thread once this process has the VM, just
 * before it resumes it.
 * Returns false, without calling @fn, if no such transfer is pending:
 * go on now.
 */
typedef void CprDeferFn(void *opaque);
bool cpr_transfer_defer(CprDeferFn *fn, void *opaque);

/*
 * The process taking the VM over is the relay of a cprsave restart with
 * "relay": it runs the VM only until the process that executed the new
 * binary takes it back, so its QMP monitors send events but read nothing
 * (their clients wait for that process's answer to cprsave).
 */
bool cpr_transfer_relaying(void);

/*
 * What went wrong in a cprsave restart with "relay", for the answer to
 * cprsave: the process that started it could not execute the new binary
 * and took the VM back with the one it ran, or the relay could not hand
 * the VM back and runs it on.  NULL if nothing did.
 */
const char *cpr_relay_error(void);

/*
 * cpr_is_incoming: true from the start of a process created by
 * "cprsave restart" until its cprload succeeds, and in a process started
 * with "-incoming cpr:CHANNEL" until it has loaded the VM's state.
 */
bool cpr_is_incoming(void);

/*
 * cpr_is_exec_incoming: cpr_is_incoming() in a process that cprsave
 * restart executed (or that took the VM back after it): a descriptor
 * the command line names by number is not open here unless it was kept,
 * and then the subsystem that kept it takes it by name.
 */
bool cpr_is_exec_incoming(void);

/*
 * cpr_takes_vm_over: this process builds its machine to take a VM over,
 * whose state it has or will receive: after "cprsave restart", with
 * "-incoming cpr:CHANNEL" or with "-incoming cpr-fork:CHANNEL".
 */
bool cpr_takes_vm_over(void);

/*
 * cpr_is_recovery: this process is the old binary taking the VM back
 * because the new one did not come up (see migration/cpr-mm.c).
 */
bool cpr_is_recovery(void);

/* True if the new process had already answered cprsave before it died */
bool cpr_recovery_replied(void);

/* The new process has sent the reply to the pending cprsave. */
void cpr_mm_reply_sent(void);

/*
 * cpr-hotplug.c: what the VM got or lost since start-up, which the
 * process taking it over recreates.  cpr_hotplug_note: QMP command
 * @name succeeded with @args; cpr_hotplug_device_gone: the device at
 * QOM path @path is gone; cpr_hotplug_replay: at start-up, once the
 * command line's devices exist, do what the old process's journal says.
 */
void cpr_hotplug_note(const char *name, QDict *args);
void cpr_hotplug_device_gone(const char *path);
bool cpr_hotplug_replay(Error **errp);

/*
 * cpr_mm_handing_back: this process was asked to quit and, when it ends,
 * the old binary takes the VM back, on the same kept connections.
 */
bool cpr_mm_handing_back(void);

/* Keep @fd open across the next execve under @name and @id. */
void cpr_save_fd(const char *name, int id, int fd);

/* Pass the string @value to the new process under @name. */
void cpr_save_str(const char *name, const char *value);

/* Stop keeping what is registered under @name and @id. */
void cpr_delete_fd(const char *name, int id);

/* cpr_save_fd() with @keep, else cpr_delete_fd() */
void cpr_keep_fd(const char *name, int id, int fd, bool keep);

/* cpr_save_str() with @keep, else cpr_delete_fd() of @name, 0 */
void cpr_keep_str(const char *name, const char *value, bool keep);

/*
 * cpr_take_fd: the descriptor inherited under @name and @id, or -1.
 * It leaves the registry: the caller owns the descriptor from then on.
 */
int cpr_take_fd(const char *name, int id);

/*
 * A subsystem whose objects hold descriptors that cross execve, but
 * which cannot register them when it gets them (a listening socket that
 * gets a client, a tap netdev), keeps them with a CprKeepFn: @keep true
 * when cprsave restart is about to execute the new binary (register
 * them), false when that failed (drop them).  CPR_KEEPER(fn) at file
 * scope adds @fn; the command code names no subsystem.
 */
typedef void CprKeepFn(bool keep);
void cpr_add_keeper(CprKeepFn *fn);
#define CPR_KEEPER(fn)                                                  \
    static void __attribute__((constructor)) cpr_keeper_ ## fn(void)    \
    {                                                                   \
        cpr_add_keeper(fn);                                             \
    }

/* cpr_has_fd: whether a descriptor is inherited under @name and @id. */
bool cpr_has_fd(const char *name, int id);

/*
 * Pass @opaque to the new process under @name, as @vmsd's vmstate record;
 * cpr_take_vmstate() loads it there into its @opaque, false with errp set
 * if there is none or it cannot be read.
 */
void cpr_save_vmstate(const char *name, const VMStateDescription *vmsd,
                      void *opaque);
/* For a post_load: @s holds @len bytes, a string and its NUL, no more */
bool cpr_vmstate_string_ok(const void *s, uint32_t len);
bool cpr_take_vmstate(const char *name, const VMStateDescription *vmsd,
                      void *opaque, Error **errp);

/* cpr_take_str: the string inherited under @name (caller frees), or NULL. */
char *cpr_take_str(const char *name);

/*
 * cpr_state_exec_prepare: write the registry into an inheritable memfd,
 * name it in CPR_STATE_ENV, clear FD_CLOEXEC on the registered
 * descriptors and set it on every other descriptor above stderr.
 * cpr_state_exec_abort() undoes all of it when execve fails.
 */
bool cpr_state_exec_prepare(Error **errp);
void cpr_state_exec_abort(void);

/* Close inherited descriptors that nobody claimed; end incoming state. */
void cpr_state_incoming_done(void);

/* The argument vector and binary this process was started with */
char **cpr_get_argv(void);
const char *cpr_get_exec_path(void);

/* cpr.c: hooks for devices that keep more than descriptors */

typedef enum CprEvent {
    /*
     * Before execve, after the state file is written (and after every
     * CprKeepFn kept its descriptors): register what must cross execve
     * and prepare for it.  Failing (with errp set) makes cprsave fail and
     * the VM resume.  (Transfer mode runs only the keepers.)
     */
    CPR_EVENT_EXEC,
    /* execve, or something after CPR_EVENT_EXEC, failed: undo it. */
    CPR_EVENT_EXEC_FAILED,
    /* In the new process: cprload loaded the state; the VM is not running. */
    CPR_EVENT_LOADED,
    /*
     * Transfer mode, before the descriptors go to the new process: stop
     * taking input this process could not answer any more.  Failing
     * (with errp set) refuses the transfer; the VM runs on.
     */
    CPR_EVENT_TRANSFER,
    /* The transfer failed after CPR_EVENT_TRANSFER: undo it. */
    CPR_EVENT_TRANSFER_FAILED,
    /*
     * The relay of a cprsave restart cannot hand the VM back and runs it
     * on: serve its clients as the VM's process (cpr_relay_error() says
     * what happened).
     */
    CPR_EVENT_RELAY_KEPT,
} CprEvent;

typedef struct CprNotifyData {
    CprEvent event;
    Error **errp;
} CprNotifyData;

/* @n->notify gets a CprNotifyData; it returns 0, or -1 with errp set. */
void cpr_add_notifier(NotifierWithReturn *n);
void cpr_remove_notifier(NotifierWithReturn *n);

/* True while cprsave writes the device state (for VMStateDescription.needed) */
bool cpr_save_in_progress(void);

/*
 * A migration blocker that does not block CPR: the device it belongs to
 * handles live update itself (VFIO) and reports, with a CprBlockerFn,
 * what blocks each mode.
 */
void cpr_allow_migration_blocker(Error *reason);
void cpr_disallow_migration_blocker(Error *reason);

/*
 * Subsystems report their own blockers: @fn appends to the list with
 * cpr_add_blocker(), naming the mode blocked, when query-cpr or cprsave
 * asks.
 */
typedef void CprBlockerFn(CprBlockerList ***tail);
void cpr_add_blocker_fn(CprBlockerFn *fn);
void cpr_add_blocker(CprBlockerList ***tail, CprMode mode, const char *object,
                     const char *fmt, ...) G_GNUC_PRINTF(4, 5);

/* cpr-ram.c: guest RAM kept in shared memory across execve */

/* Whether -machine memfd-alloc=on asks for memfd-backed RAM */
bool cpr_memfd_alloc_enabled(void);

/*
 * cpr_ram_alloc_memfd: back @rb with a new memfd mapped shared; returns
 * the host address or NULL.  Sets @rb->fd and RAM_SHARED.
 */
void *cpr_ram_alloc_memfd(RAMBlock *rb, Error **errp);

/*
 * cpr_ram_adopt: called when @rb gets its migration name.  In a process
 * started by cprsave, map the memfd the previous process left for this
 * block over @rb's memory, at the same host address.
 */
void cpr_ram_adopt(RAMBlock *rb);

/*
 * cpr_ram_take_for_backend: for a memory backend named @name about to
 * allocate @size bytes in a memfd: the memfd a process before cprsave
 * restart kept for the block of that name, to map instead of a new one
 * (its pages, huge pages included, are not allocated twice), or -1.
 * cpr_ram_adopt() then finds the block done.
 */
int cpr_ram_take_for_backend(const char *name, uint64_t size);

/* cpr-snapshot.c: in-memory snapshot and restore (fuzzing) */

/*
 * cpr_snapshot_take: snapshot the VM (RAM, device and CPU state) and
 * track RAM writes from then on; replaces the snapshot there was, unless
 * it is refused.  @name: savevm's, or NULL.  Restores leave the memory
 * backends and devices named in @exclude as they are, and with
 * @ignore_shared all shared RAM.  With @disks, the disks devices can
 * write go under overlays that each restore empties.
 */
bool cpr_snapshot_take(const char *name, strList *exclude,
                       bool ignore_shared, bool disks, Error **errp);

/*
 * cpr_snapshot_restore: put the VM back into the snapshot's state; it
 * resumes if it was running.  With @verify, check that saving device
 * and CPU state again gives the snapshot's; with @compare, restore
 * through the stream and then the restore plan, and check that both give
 * the same device and CPU state.
 */
bool cpr_snapshot_restore(bool verify, bool compare, Error **errp);

/*
 * cpr_snapshot_restore_in_vcpu: the same for a running VM, from the
 * thread of its only vCPU (TCG), which holds the BQL: the run state does
 * not change.  The caller then leaves the translated code it runs
 * (cpu_loop_exit()): the vCPU goes on from the snapshot's state.
 * @started is false if the restore was refused before anything changed.
 */
bool cpr_snapshot_restore_in_vcpu(bool *started, Error **errp);

/* cpr_snapshot_drop: forget the snapshot, if any */
void cpr_snapshot_drop(void);

bool cpr_snapshot_exists(void);

/* cpr_snapshot_name: the name savevm gave the snapshot, or NULL */
const char *cpr_snapshot_name(void);


/* cpr_snapshot_restores: restores done from the snapshot so far */
uint64_t cpr_snapshot_restores(void);

/*
 * cpr-savevm.c: with -machine cpr-snapshot=on, savevm, loadvm, delvm and
 * info snapshots (and the snapshot-save/-load/-delete jobs) use the CPR
 * snapshot instead of disk images
 */
bool cpr_savevm_enabled(void);
bool cpr_savevm_save(const char *name, bool overwrite, Error **errp);
bool cpr_savevm_load(const char *name, Error **errp);
bool cpr_savevm_delete(const char *name, Error **errp);
void cpr_savevm_info(Monitor *mon);

/*
 * cpr_restoring: a restore in this process (a snapshot restore, a fork
 * reset) is under way.  It puts back every page of guest RAM written
 * since the saved state and drops the translated code of those pages, so
 * the machine reset and the load that are part of it need not rewrite
 * ROMs into RAM nor flush all translated code.
 */
bool cpr_restoring(void);

#endif
