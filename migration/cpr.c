/*
 * CPR (checkpoint and restart): the cprsave, cprload and query-cpr commands
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The mode-neutral part of every mode: refuse if anything blocks the
 * mode, let the mode prepare while the VM runs (cpr-transfer.c hands the
 * descriptors over), stop the vCPUs, write the state (device and CPU
 * state, plus what the mode adds) into a file or into memory, then let
 * the mode finish (cpr-restart.c executes the new binary, cpr-reboot.c
 * leaves the VM paused, cpr-transfer.c sends the state).  If anything
 * fails before that, the VM is left as the mode says (restart, transfer:
 * resumed).
 *
 * cprsave is a coroutine command: a mode's preparation may wait while
 * the main loop goes on running the VM.  The rest runs outside of
 * coroutine context.
 *
 * cprload checks the state whole, loads what the mode put into it and
 * device and CPU state, and restores the run state the VM had when it
 * was saved.  A load that fails at any stage leaves the process ready
 * for another try.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/error-report.h"
#include "qapi/qapi-commands-cpr.h"
#include "block/block.h"
#include "hw/boards.h"
#include "qemu/job.h"
#include "qemu/coroutine.h"
#include "qemu/main-loop.h"
#include "block/aio.h"
#include "migration/cpr.h"
#include "migration/global_state.h"
#include "migration/misc.h"
#include "migration/migration.h"
#include "migration/savevm.h"
#include "sysemu/runstate.h"
#include "sysemu/sysemu.h"
#include "cpr-internal.h"
#include "trace.h"

static const CprModeOps *const cpr_modes[] = {
    [CPR_MODE_RESTART] = &cpr_restart_ops,
    [CPR_MODE_REBOOT] = &cpr_reboot_ops,
    [CPR_MODE_TRANSFER] = &cpr_transfer_ops,
    [CPR_MODE_FORK] = &cpr_fork_ops,
    [CPR_MODE_CHECKPOINT] = &cpr_checkpoint_ops,
};
QEMU_BUILD_BUG_ON(ARRAY_SIZE(cpr_modes) != CPR_MODE__MAX);

void cpr_init(int argc, char **argv, Error **errp)
{
    ERRP_GUARD();

    cpr_state_init(argc, argv, errp);
    if (!*errp && cpr_state_incoming_channel()) {
        cpr_transfer_incoming(cpr_state_incoming_channel(), errp);
    } else if (!*errp && cpr_state_fork_channel()) {
        cpr_fork_incoming(cpr_state_fork_channel(), errp);
    }
    if (!*errp && cpr_is_incoming()) {
        cpr_mm_incoming(cpr_state_get_helper());
        cpr_step("inherited");
    }
}

void cpr_started(void)
{
    CprMode m;

    for (m = 0; m < CPR_MODE__MAX; m++) {
        if (cpr_modes[m]->started) {
            cpr_modes[m]->started();
        }
    }
}

/* What blocks each mode now */
static CprBlockerList *cpr_blockers(void)
{
    CprBlockerList *list = NULL, **tail = &list;
    CprMode m;

    for (m = 0; m < CPR_MODE__MAX; m++) {
        if (cpr_modes[m]->blockers) {
            cpr_modes[m]->blockers(&tail);
        }
    }
    cpr_hooks_add_blockers(&tail);
    return list;
}

CprInfo *qmp_query_cpr(Error **errp)
{
    CprInfo *info = g_new0(CprInfo, 1);
    CprMode m;

    for (m = CPR_MODE__MAX; m-- > 0;) {
        QAPI_LIST_PREPEND(info->modes, m);
    }
    info->blockers = cpr_blockers();
    info->load_pending = cpr_is_incoming();
    info->taken_back = cpr_is_incoming() && cpr_is_recovery();
    info->snapshot = cpr_snapshot_info();
    info->has_snapshot = info->snapshot != NULL;
    info->checkpoint = cpr_checkpoint_info();
    info->has_checkpoint = info->checkpoint != NULL;
    return info;
}

/*
 * A job (snapshot-save/load/delete, block mirror, backup, stream, ...)
 * would not exist in the new process: refuse until it has finished.
 */
static bool cpr_jobs_idle(Error **errp)
{
    Job *job;

    JOB_LOCK_GUARD();
    for (job = job_next_locked(NULL); job; job = job_next_locked(job)) {
        if (!job_is_completed_locked(job)) {
            error_setg(errp, "job '%s' (%s) is running; wait for it to end "
                       "or cancel it", job->id, job_type_str(job));
            return false;
        }
    }
    return true;
}

/* A cprsave waits in its mode's preparation */
static bool cpr_save_busy;

bool cpr_mode_allowed(CprMode mode, Error **errp)
{
    g_autoptr(CprBlockerList) blockers = NULL;
    CprBlockerList *b;

    if (cpr_is_incoming() || cpr_save_busy) {
        error_setg(errp, "a cprsave or a load is in progress");
        return false;
    }
    if (!runstate_check(RUN_STATE_RUNNING) &&
        !runstate_check(RUN_STATE_PAUSED)) {
        error_setg(errp, "the VM is neither running nor paused");
        return false;
    }
    if (!migration_is_idle()) {
        error_setg(errp, "a migration is in progress");
        return false;
    }
    blockers = cpr_blockers();
    for (b = blockers; b; b = b->next) {
        if (b->value->mode == mode) {
            error_setg(errp, "%s is blocked by '%s': %s",
                       mode == CPR_MODE_FORK ? "cpr-fork" :
                       mode == CPR_MODE_CHECKPOINT ? "cpr-checkpoint" :
                       "cprsave",
                       b->value->object, b->value->reason);
            return false;
        }
    }
    return true;
}

/*
 * Whether @b blocks this cprsave.  A relay executes the new binary as
 * restart mode does and hands the VM over as transfer mode does, and
 * starts its relay process without -pidfile.
 */
static bool cpr_blocks(const CprModeOps *ops, const CprSaveArgs *args,
                       CprBlocker *b)
{
    if (args->relay) {
        return b->mode == CPR_MODE_RESTART ||
               (b->mode == CPR_MODE_TRANSFER && strcmp(b->object, "pidfile"));
    }
    return b->mode == ops->mode;
}

/* Everything that can be checked before the VM is touched */
static bool cpr_save_allowed(const CprModeOps *ops, const CprSaveArgs *args,
                             Error **errp)
{
    ERRP_GUARD();
    g_autoptr(CprBlockerList) blockers = NULL;
    CprBlockerList *b, *first = NULL;
    char state[64];

    if (cpr_is_incoming()) {
        error_setg(errp, "this process is waiting for cprload; "
                   "load the state before saving it again");
        return false;
    }
    if (cpr_save_busy) {
        error_setg(errp, "a cprsave is in progress");
        return false;
    }
    if (args->binary && !ops->has_binary && !args->relay) {
        error_setg(errp, "'binary' is only for mode 'restart'");
        return false;
    }
    if (args->auto_load && !ops->has_auto_load) {
        error_setg(errp, "'auto-load' is only for mode 'restart'");
        return false;
    }
    if (args->channel && !ops->has_channel) {
        error_setg(errp, "'channel' is only for mode 'transfer'");
        return false;
    }
    if (!ops->has_channel && !args->file) {
        error_setg(errp, "mode '%s' needs 'file'", CprMode_str(ops->mode));
        return false;
    }
    if (ops->has_channel && args->file) {
        error_setg(errp, "mode '%s' does not write a file: give 'channel'",
                   CprMode_str(ops->mode));
        return false;
    }
    if (ops->has_channel && !args->channel) {
        error_setg(errp, "mode '%s' needs 'channel'", CprMode_str(ops->mode));
        return false;
    }
    if (!runstate_check(RUN_STATE_RUNNING) &&
        !runstate_check(RUN_STATE_PAUSED) &&
        !runstate_check(RUN_STATE_SUSPENDED)) {
        runstate_store(state, sizeof(state));
        error_setg(errp, "cannot save a VM in run state '%s'", state);
        return false;
    }
    if (!migration_is_idle()) {
        error_setg(errp, "a migration is in progress");
        return false;
    }
    if (!cpr_jobs_idle(errp)) {
        return false;
    }
    blockers = cpr_blockers();
    for (b = blockers; b; b = b->next) {
        if (!cpr_blocks(ops, args, b->value)) {
            continue;
        }
        if (first) {
            error_append_hint(errp, "query-cpr lists all blockers\n");
            break;
        }
        first = b;
        error_setg(errp, "cprsave is blocked by '%s': %s",
                   b->value->object, b->value->reason);
    }
    if (first) {
        return false;
    }
    if ((ops->has_binary || args->relay) &&
        !cpr_binary_check(args->binary ?: cpr_get_exec_path(), errp)) {
        return false;
    }
    return !ops->check || ops->check(args, errp);
}

typedef struct CprSave {
    const CprModeOps *ops;
    CprSaveArgs args;
    Error **errp;
    Coroutine *co;
} CprSave;

/* Stop the VM, save it, and let the mode finish (outside of a coroutine) */
static void cpr_save_stopped(CprSave *s)
{
    Error **errp = s->errp;
    const CprModeOps *ops = s->ops;
    bool was_running = runstate_is_running();
    const char *what = s->args.file ?: s->args.channel;
    bool ok;

    if (!cpr_stop(ops->stop_state, errp) || !cpr_ram_move_finish(errp)) {
        goto failed;
    }
    cpr_set_saving(true);
    if (ops->has_channel) {
        s->args.state = cpr_file_save(ops->mode, errp);
        ok = s->args.state != NULL;
    } else {
        ok = cpr_file_write(s->args.file, ops->mode, ops->file, errp);
    }
    cpr_set_saving(false);
    if (ok && (!ops->finish || ops->finish(&s->args, errp))) {
        trace_cpr_save_done(what, CprMode_str(ops->mode));
        return;
    }

failed:
    trace_cpr_save_failed(error_get_pretty(*errp));
    cpr_ram_move_abort();
    cpr_ram_move_release();
    /* Undone before the VM runs again (VFIO takes its mappings back) */
    if (ops->abandon) {
        ops->abandon();
    }
    if (was_running && ops->resume_on_error &&
        (!ops->can_resume || ops->can_resume())) {
        vm_start();
    }
}

static void cpr_save_stopped_bh(void *opaque)
{
    CprSave *s = opaque;

    cpr_save_stopped(s);
    aio_co_wake(s->co);
}

/* cprsave: its checks, the mode's preparation, the save */
static void coroutine_fn cpr_save(CprSave *s)
{
    Error **errp = s->errp;

    if (s->ops->prepare && !qemu_in_coroutine()) {
        /* HMP: the main loop would not run the VM while the mode waits */
        error_setg(errp, "mode '%s'%s is available over QMP only",
                   CprMode_str(s->args.relay ? CPR_MODE_RESTART :
                               s->ops->mode),
                   s->args.relay ? " with 'relay'" : "");
        goto refused;
    }
    if (!cpr_save_allowed(s->ops, &s->args, errp)) {
        goto refused;
    }
    trace_cpr_save_start(s->args.file ?: s->args.channel,
                         CprMode_str(s->ops->mode));
    cpr_save_busy = true;
    /*
     * Anonymous guest RAM goes into memfds: they exist before the mode
     * prepares (transfer mode passes them on), and are filled while the
     * VM runs, right before it stops
     */
    if (s->ops->ram_kept && !cpr_ram_move_start(errp)) {
        trace_cpr_save_failed(error_get_pretty(*errp));
        goto out;
    }
    if (s->ops->prepare && !s->ops->prepare(&s->args, errp)) {
        trace_cpr_save_failed(error_get_pretty(*errp));
        cpr_ram_move_abort();
        goto out;
    }
    if (!cpr_ram_move_copy_all(errp)) {
        trace_cpr_save_failed(error_get_pretty(*errp));
        if (s->ops->abandon) {
            s->ops->abandon();
        }
        goto out;
    }
    if (qemu_in_coroutine()) {
        /*
         * Outside of coroutine context, from the main loop only: not from
         * a nested aio_poll() of the main AioContext (a vCPU thread
         * draining a disk), where stopping the VM would only be requested
         */
        s->co = qemu_coroutine_self();
        aio_bh_schedule_oneshot(iohandler_get_aio_context(),
                                cpr_save_stopped_bh, s);
        qemu_coroutine_yield();
    } else {
        cpr_save_stopped(s);
    }
out:
    if (*errp) {
        cpr_ram_move_release();
    }
    g_clear_pointer(&s->args.state, g_byte_array_unref);
    cpr_save_busy = false;
    return;

refused:
    /* The mode's preparation takes a given channel; nobody else does */
    if (s->args.channel_fd >= 0) {
        close(s->args.channel_fd);
    }
}

void coroutine_fn qmp_cprsave(bool has_file, const char *file, CprMode mode,
                              bool has_binary, const char *binary,
                              bool has_auto_load, bool auto_load,
                              bool has_channel, const char *channel,
                              bool has_relay, bool relay, Error **errp)
{
    ERRP_GUARD();
    CprSave s = {
        .ops = cpr_modes[mode],
        .args = {
            .file = has_file ? file : NULL,
            .binary = has_binary ? binary : NULL,
            .auto_load = has_auto_load && auto_load,
            .channel = has_channel ? channel : NULL,
            .channel_fd = -1,
        },
        .errp = errp,
    };

    if (mode == CPR_MODE_FORK) {
        error_setg(errp, "a VM forks with cpr-fork, not cprsave");
        return;
    }
    if (mode == CPR_MODE_CHECKPOINT) {
        error_setg(errp, "a checkpoint is written with cpr-checkpoint, "
                   "not cprsave");
        return;
    }
    if (has_relay && relay) {
        char **arg;

        for (arg = cpr_get_argv(); *arg; arg++) {
            if (!strcmp(*arg, "--preconfig") || !strcmp(*arg, "-preconfig")) {
                error_setg(errp, "a QEMU started with --preconfig cannot "
                           "go through a relay, which would wait for "
                           "x-exit-preconfig");
                return;
            }
        }
        if (mode != CPR_MODE_RESTART) {
            error_setg(errp, "'relay' is only for mode 'restart'");
            return;
        }
        if (has_file || has_channel || s.args.auto_load) {
            error_setg(errp, "mode 'restart' with 'relay' takes no 'file', "
                       "'channel' or 'auto-load': the VM goes through a "
                       "relay process and resumes by itself");
            return;
        }
        /* Handed over as transfer mode does, to the same binary twice */
        s.ops = &cpr_transfer_ops;
        s.args.relay = true;
        s.args.channel = "relay";
        s.args.binary = s.args.binary ?: cpr_get_exec_path();
    }
    cpr_save(&s);
}

bool coroutine_fn cpr_save_relay_back(int fd, Error **errp)
{
    ERRP_GUARD();
    CprSave s = {
        .ops = &cpr_transfer_ops,
        .args = { .channel = "relay", .channel_fd = fd },
        .errp = errp,
    };

    cpr_save(&s);
    return !*errp;
}

/* Which mode's file this process can load now, or -1 with errp set */
static int cpr_load_mode(Error **errp)
{
    CprMode m;

    for (m = 0; m < CPR_MODE__MAX; m++) {
        if (cpr_modes[m]->load_pending && cpr_modes[m]->load_pending()) {
            return m;
        }
    }
    error_setg(errp, "no CPR restart is waiting to be loaded, and QEMU was "
               "not started with -incoming defer to load a reboot-mode file");
    return -1;
}

RunState cpr_saved_runstate(void)
{
    return global_state_received() ? global_state_get_runstate()
                                   : RUN_STATE_RUNNING;
}

void cpr_enter_runstate(RunState state)
{
    if (state == RUN_STATE_RUNNING) {
        vm_start();
    } else {
        runstate_set(state);
    }
}

bool cpr_load_state(CprMode mode, CprFile *cf, Error **errp)
{
    ERRP_GUARD();
    const CprModeOps *ops = cpr_modes[mode];
    const char *machine = MACHINE_GET_CLASS(current_machine)->name;
    RunState state;

    if (cf->mode != mode) {
        error_setg(errp, "'%s' was saved in mode '%s'%s", cf->path,
                   CprMode_str(cf->mode), ops->other_mode_hint);
        return false;
    }
    if (strcmp(cf->machine, machine)) {
        error_setg(errp, "'%s' was saved by machine type '%s'; this VM is "
                   "'%s'", cf->path, cf->machine, machine);
        return false;
    }
    if (!cpr_ram_check(cf, ops->ram_kept, errp)) {
        return false;
    }
    trace_cpr_load_start(cf->path);
    cpr_step("load-started");

    cpr_load_devices_prepare();
    if (!cpr_ram_resize(cf, errp)) {
        return false;
    }
    if (ops->load_ram && !ops->load_ram(cf, errp)) {
        return false;
    }
    if (!cpr_file_load_devices(cf, errp)) {
        return false;
    }
    bdrv_activate_all(errp);
    if (*errp) {
        return false;
    }
    if (ops->loaded) {
        ops->loaded();
    }

    state = cpr_saved_runstate();
    if (state == RUN_STATE_RUNNING && ops->obeys_autostart && !autostart &&
        !cpr_relay_leg_incoming()) {
        state = RUN_STATE_PAUSED;   /* -S, as after an incoming migration */
    }
    trace_cpr_load_done(RunState_str(state));
    cpr_enter_runstate(state);
    if (ops->load_done) {
        ops->load_done();
    }
    return true;
}

void qmp_cprload(const char *file, Error **errp)
{
    g_autoptr(CprFile) cf = NULL;
    int mode = cpr_load_mode(errp);

    if (mode < 0) {
        return;
    }
    cf = cpr_file_read(file, errp);
    if (cf) {
        cpr_load_state(mode, cf, errp);
    }
}
