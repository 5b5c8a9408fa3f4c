/*
 * CPR (checkpoint and restart): the cprsave, cprload and query-cpr commands
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * cprsave restart: refuse if anything blocks it, stop the vCPUs, write
 * the state file, register guest RAM in the CPR state, and execve the
 * QEMU binary with the same arguments.  Guest RAM stays in its memfds and
 * is never copied.  If anything fails before the new binary runs, the VM
 * resumes in this process as if nothing had happened.
 *
 * The new process comes up paused in the "inmigrate" run state; cprload
 * checks the state file, loads device and CPU state and restores the run
 * state the VM had when it was saved.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/error-report.h"
#include "qapi/qapi-commands-cpr.h"
#include "block/block.h"
#include "chardev/char-socket-cpr.h"
#include "hw/boards.h"
#include "qemu/config-file.h"
#include "qemu/job.h"
#include "qemu/option.h"
#include "migration/cpr.h"
#include "migration/global_state.h"
#include "migration/misc.h"
#include "migration/migration.h"
#include "migration/savevm.h"
#include "monitor/fdset-cpr.h"
#include "monitor/monitor.h"
#include "net/tap-cpr.h"
#include "sysemu/runstate.h"
#include "sysemu/sysemu.h"
#include "cpr-internal.h"
#include "trace.h"

void cpr_add_blocker(CprBlockerList ***tail, const char *object,
                     const char *fmt, ...)
{
    CprBlocker *b = g_new0(CprBlocker, 1);
    va_list ap;

    va_start(ap, fmt);
    b->mode = CPR_MODE_RESTART;
    b->object = g_strdup(object);
    b->reason = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    QAPI_LIST_APPEND(*tail, b);
}

static NotifierWithReturnList cpr_notifiers =
    NOTIFIER_WITH_RETURN_LIST_INITIALIZER(cpr_notifiers);
static GSList *cpr_allowed_blockers;     /* Error * */
static GSList *cpr_blocker_fns;          /* CprBlockerFn * */
static bool cpr_saving;

void cpr_add_notifier(NotifierWithReturn *n)
{
    notifier_with_return_list_add(&cpr_notifiers, n);
}

void cpr_remove_notifier(NotifierWithReturn *n)
{
    notifier_with_return_remove(n);
}

static bool cpr_notify(CprEvent event, Error **errp)
{
    CprNotifyData data = { .event = event, .errp = errp };

    return notifier_with_return_list_notify(&cpr_notifiers, &data) == 0;
}

bool cpr_save_in_progress(void)
{
    return cpr_saving;
}

void cpr_allow_migration_blocker(Error *reason)
{
    cpr_allowed_blockers = g_slist_prepend(cpr_allowed_blockers, reason);
}

void cpr_disallow_migration_blocker(Error *reason)
{
    cpr_allowed_blockers = g_slist_remove(cpr_allowed_blockers, reason);
}

void cpr_add_blocker_fn(CprBlockerFn *fn)
{
    cpr_blocker_fns = g_slist_append(cpr_blocker_fns, fn);
}

static void cpr_add_migration_blocker(Error *err, void *opaque)
{
    if (!g_slist_find(cpr_allowed_blockers, err)) {
        cpr_add_blocker(opaque, "migration", "%s", error_get_pretty(err));
    }
}

static void cpr_add_unmigratable(const char *idstr, void *opaque)
{
    cpr_add_blocker(opaque, idstr, "device state cannot be saved");
}

static int cpr_add_sandbox_blocker(void *opaque, QemuOpts *opts,
                                   Error **errp)
{
    const char *spawn = qemu_opt_get(opts, "spawn");

    if (qemu_opt_get_bool(opts, "enable", false) && spawn &&
        !strcmp(spawn, "deny")) {
        cpr_add_blocker(opaque, "sandbox", "-sandbox spawn=deny makes the "
                        "kernel kill QEMU when it executes the new binary; "
                        "start QEMU without spawn=deny (libvirt: "
                        "seccomp_sandbox = 0)");
    }
    return 0;
}

static CprBlockerList *cpr_blockers(void)
{
    CprBlockerList *list = NULL, **tail = &list;
    QemuOptsList *sandbox = qemu_find_opts_err("sandbox", NULL);
    GSList *fns;

    if (is_daemonized()) {
        cpr_add_blocker(&tail, "daemonize", "QEMU was started with "
                        "-daemonize, which the restarted process would do "
                        "again; run QEMU in the foreground under a "
                        "supervisor");
    }
    if (sandbox) {
        qemu_opts_foreach(sandbox, cpr_add_sandbox_blocker, &tail, NULL);
    }
    cpr_ram_add_blockers(&tail);
    qemu_savevm_foreach_unmigratable(cpr_add_unmigratable, &tail);
    migration_foreach_blocker(cpr_add_migration_blocker, &tail);
    for (fns = cpr_blocker_fns; fns; fns = fns->next) {
        ((CprBlockerFn *)fns->data)(&tail);
    }
    return list;
}

CprInfo *qmp_query_cpr(Error **errp)
{
    CprInfo *info = g_new0(CprInfo, 1);

    QAPI_LIST_PREPEND(info->modes, CPR_MODE_RESTART);
    info->blockers = cpr_blockers();
    info->load_pending = cpr_is_incoming();
    info->snapshot = cpr_snapshot_info();
    info->has_snapshot = info->snapshot != NULL;
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

/* Everything that can be checked before the VM is touched */
static bool cpr_save_allowed(const char *exec_path, Error **errp)
{
    g_autoptr(CprBlockerList) blockers = NULL;
    char state[64];

    if (cpr_is_incoming()) {
        error_setg(errp, "this process is waiting for cprload; "
                   "load the state before saving it again");
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
    if (blockers) {
        error_setg(errp, "cprsave is blocked by '%s': %s",
                   blockers->value->object, blockers->value->reason);
        if (blockers->next) {
            error_append_hint(errp, "query-cpr lists all blockers\n");
        }
        return false;
    }
    if (access(exec_path, X_OK) < 0) {
        error_setg_errno(errp, errno, "cannot execute '%s'", exec_path);
        return false;
    }
    return true;
}

static void cpr_exec(const char *exec_path, Error **errp)
{
    Error *err = NULL;
    pid_t helper;

    cpr_ram_register_fds();
    char_socket_cpr_register();
    monitor_qmp_cpr_register(true);
    monitor_fdset_cpr_register(true);
    tap_cpr_register();
    if (!cpr_notify(CPR_EVENT_EXEC, errp) || !cpr_mm_prepare(errp)) {
        goto undo;
    }
    if (!cpr_state_exec_prepare(errp)) {
        helper = -1;
        goto release;
    }
    helper = cpr_mm_start(errp);
    if (helper < 0) {
        goto abort;
    }
    cpr_state_set_helper(helper);
    if (bdrv_inactivate_all() < 0) {
        error_setg(errp, "cannot hand over block devices");
        goto abort;
    }
    trace_cpr_exec(exec_path);
    execv(exec_path, cpr_get_argv());
    error_setg_errno(errp, errno, "cannot execute '%s'", exec_path);
    bdrv_activate_all(&err);
    if (err) {
        warn_report_err(err);
    }
abort:
    cpr_state_exec_abort();
release:
    cpr_mm_release(helper);
undo:
    cpr_notify(CPR_EVENT_EXEC_FAILED, NULL);
    tap_cpr_unregister();
    monitor_fdset_cpr_register(false);
    monitor_qmp_cpr_register(false);
    char_socket_cpr_unregister();
    cpr_ram_unregister_fds();
}

void qmp_cprsave(const char *file, CprMode mode, bool has_binary,
                 const char *binary, Error **errp)
{
    ERRP_GUARD();
    const char *exec_path = has_binary ? binary : cpr_get_exec_path();
    bool was_running = runstate_is_running();

    if (!cpr_save_allowed(exec_path, errp)) {
        return;
    }
    trace_cpr_save_start(file, CprMode_str(mode));

    global_state_store();
    if (vm_stop(RUN_STATE_SAVE_VM)) {
        error_setg(errp, "cannot flush block devices before saving");
        goto resume;
    }
    cpr_saving = true;
    if (!cpr_file_write(file, mode, errp)) {
        cpr_saving = false;
        goto resume;
    }
    cpr_saving = false;
    cpr_exec(exec_path, errp);
    unlink(file);

resume:
    /* Still here: leave the VM as it was before the command. */
    trace_cpr_save_failed(error_get_pretty(*errp));
    if (was_running) {
        vm_start();
    }
}

void qmp_cprload(const char *file, Error **errp)
{
    ERRP_GUARD();
    g_autoptr(CprFile) cf = NULL;
    const char *machine = MACHINE_GET_CLASS(current_machine)->name;
    Error *err = NULL;
    RunState state;

    if (!cpr_is_incoming()) {
        error_setg(errp, "no CPR restart is waiting to be loaded");
        return;
    }
    cf = cpr_file_read(file, errp);
    if (!cf) {
        return;
    }
    if (strcmp(cf->machine, machine)) {
        error_setg(errp, "'%s' was saved by machine type '%s'; this VM is "
                   "'%s'", file, cf->machine, machine);
        return;
    }
    if (!cpr_ram_check(cf->ram, errp)) {
        return;
    }
    trace_cpr_load_start(file);

    if (!cpr_ram_apply(cf->ram, errp) ||
        !cpr_file_load_devices(cf, errp)) {
        return;
    }
    bdrv_activate_all(errp);
    if (*errp) {
        return;
    }
    if (!cpr_notify(CPR_EVENT_LOADED, &err)) {
        warn_report_err(err);
    }

    state = global_state_received() ? global_state_get_runstate()
                                    : RUN_STATE_RUNNING;
    trace_cpr_load_done(RunState_str(state));
    if (state == RUN_STATE_RUNNING) {
        vm_start();
    } else {
        runstate_set(state);
    }
    /* Only now let the old address space go, outside the pause. */
    cpr_mm_done();
    cpr_state_incoming_done();
}
