/*
 * CPR restart mode: a new QEMU binary executed in the same process
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * After the state file is written, guest RAM (memfds) and the registered
 * descriptors are kept and the QEMU binary is executed with the same
 * arguments.  Guest RAM is never copied.  If anything fails before the
 * new binary runs, everything is undone and the VM resumes here.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/error-report.h"
#include "qemu/config-file.h"
#include "qemu/option.h"
#include "block/block.h"
#include "qapi/qapi-commands-cpr.h"
#include "qapi/qapi-events-cpr.h"
#include "migration/cpr.h"
#include "sysemu/runstate.h"
#include "sysemu/sysemu.h"
#include "cpr-internal.h"
#include "trace.h"

static int cpr_restart_sandbox_blocker(void *opaque, QemuOpts *opts,
                                       Error **errp)
{
    const char *spawn = qemu_opt_get(opts, "spawn");

    if (qemu_opt_get_bool(opts, "enable", false) && spawn &&
        !strcmp(spawn, "deny")) {
        cpr_add_blocker(opaque, CPR_MODE_RESTART, "sandbox",
                        "-sandbox spawn=deny makes the kernel kill QEMU "
                        "when it executes the new binary; use mode "
                        "'transfer', or start QEMU without spawn=deny "
                        "(libvirt: seccomp_sandbox = 0)");
    }
    return 0;
}

static void cpr_restart_blockers(CprBlockerList ***tail)
{
    QemuOptsList *sandbox = qemu_find_opts_err("sandbox", NULL);

    if (is_daemonized()) {
        cpr_add_blocker(tail, CPR_MODE_RESTART, "daemonize",
                        "QEMU was started with -daemonize, which the "
                        "restarted process would do again; run QEMU in the "
                        "foreground under a supervisor");
    }
    if (sandbox) {
        qemu_opts_foreach(sandbox, cpr_restart_sandbox_blocker, tail, NULL);
    }
    cpr_ram_add_blockers(tail, CPR_MODE_RESTART);
}

static bool cpr_restart_check(const CprSaveArgs *args, Error **errp)
{
    char **arg;

    /* The new process would wait for x-exit-preconfig before loading */
    for (arg = cpr_get_argv(); args->auto_load && *arg; arg++) {
        if (!strcmp(*arg, "-preconfig") || !strcmp(*arg, "--preconfig")) {
            error_setg(errp, "'auto-load' cannot be used with --preconfig");
            return false;
        }
    }
    return true;
}

/* Returns only if the new binary could not be executed */
static bool cpr_restart_finish(const CprSaveArgs *args, Error **errp)
{
    const char *exec_path = args->binary ?: cpr_get_exec_path();
    Error *err = NULL;
    pid_t helper;

    cpr_step("restart-saved");
    cpr_keep_str(CPR_AUTO_LOAD_NAME, args->file, args->auto_load);
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
    if (!cpr_state_set_helper(helper, errp)) {
        goto abort;
    }
    if (bdrv_inactivate_all() < 0) {
        error_setg(errp, "cannot hand over block devices");
        goto activate;
    }
    cpr_step("restart-exec");
    /*
     * A termination signal that came during the save ends the VM here; one
     * that comes from now on is held back, and taken by the new process
     */
    cpr_mm_block_term();
    if (qemu_shutdown_requested_get() != SHUTDOWN_CAUSE_NONE) {
        error_setg(errp, "QEMU is shutting down");
        cpr_mm_unblock_term();
        goto activate;
    }
    trace_cpr_exec(exec_path);
    execv(exec_path, cpr_get_argv());
    error_setg_errno(errp, errno, "cannot execute '%s'", exec_path);
    cpr_mm_unblock_term();
activate:
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
    cpr_keep_str(CPR_AUTO_LOAD_NAME, NULL, false);
    unlink(args->file);
    return false;
}

/* This process was started by cprsave restart and waits for cprload */
static bool cpr_restart_load_pending(void)
{
    return cpr_is_incoming() && !cpr_state_transferred();
}

/* Whether this process is to load its state file by itself */
static bool cpr_auto_load_coming(void)
{
    return cpr_is_incoming() && !cpr_is_recovery() &&
           !cpr_state_transferred() && cpr_has_fd(CPR_AUTO_LOAD_NAME, 0);
}

/* Who waits for the auto-load; both run in the main thread */
static CprAutoLoadFn *cpr_auto_load_fn;
static void *cpr_auto_load_opaque;

bool cpr_auto_load_wait(CprAutoLoadFn *fn, void *opaque)
{
    if (!cpr_auto_load_coming()) {
        return false;
    }
    cpr_auto_load_fn = fn;
    cpr_auto_load_opaque = opaque;
    return true;
}

/*
 * The end of the new process's start-up: load the file cprsave asked
 * for with auto-load (not in a process that took the VM back: that one
 * answers cprsave with an error and waits for cprload).
 */
static void cpr_restart_started(void)
{
    g_autofree char *file = NULL;
    Error *err = NULL;

    if (cpr_restart_load_pending() && cpr_is_recovery()) {
        cpr_step("restart-taken-back");
        warn_report("cprsave restart: the new QEMU ended before it had "
                    "loaded the VM; this process %d (the previous binary) "
                    "took the VM back, paused, and waits for cprload",
                    getpid());
        qapi_event_send_cpr_taken_back(getpid(), cpr_recovery_replied());
    } else if (cpr_restart_load_pending()) {
        cpr_step("restart-started");
    }
    if (!cpr_auto_load_coming()) {
        return;
    }
    file = cpr_take_str(CPR_AUTO_LOAD_NAME);
    if (file) {
        trace_cpr_auto_load(file);
        qmp_cprload(file, &err);
    } else {
        error_setg(&err, "the CPR state names no state file to load");
    }
    if (err) {
        warn_report("cprsave auto-load: %s", error_get_pretty(err));
    }
    if (cpr_auto_load_fn) {
        cpr_auto_load_fn(cpr_auto_load_opaque, err);
    }
    error_free(err);
}

static void cpr_restart_loaded(void)
{
    Error *err = NULL;

    if (!cpr_notify(CPR_EVENT_LOADED, &err)) {
        warn_report_err(err);
    }
    /*
     * The old address space goes (the helper exits, outside the pause)
     * before the guest runs here: from then on only this process can go
     * on with the VM, and a take-back would load the state file over
     * newer RAM
     */
    cpr_mm_done();
    cpr_step("restart-loaded");
}

static void cpr_restart_load_done(void)
{
    cpr_ram_load_done();
    cpr_state_incoming_done();
}

const CprModeOps cpr_restart_ops = {
    .mode = CPR_MODE_RESTART,
    .stop_state = RUN_STATE_SAVE_VM,
    .resume_on_error = true,
    .has_binary = true,
    .has_auto_load = true,
    .blockers = cpr_restart_blockers,
    .check = cpr_restart_check,
    .finish = cpr_restart_finish,
    .load_pending = cpr_restart_load_pending,
    .ram_kept = true,
    .loaded = cpr_restart_loaded,
    .load_done = cpr_restart_load_done,
    .started = cpr_restart_started,
    .other_mode_hint = "; this process waits for the file of its cprsave "
                       "restart",
};
