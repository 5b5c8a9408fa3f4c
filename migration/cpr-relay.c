/*
 * CPR restart through a relay: the new binary's start-up out of the pause
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * cprsave restart with "relay" keeps the PID, as restart does, but the
 * guest does not wait for the new QEMU to start up.  This process (P)
 * starts the new binary once as a process of its own, the relay (R),
 * connected to it by a socket pair, and hands the VM over to it as
 * transfer mode does (cpr-transfer.c).  Once R runs the VM, P executes
 * the new binary in its own PID as a process taking a VM over from
 * "-incoming cpr:fd:N", the same socket, and R hands the VM back to it
 * the same way and exits:
 *
 *   P, old binary           R, new binary            P, new binary
 *   spawn R  ------------>  waits
 *   state + descriptors ->  starts up with them
 *   (the VM runs on)  <---  ready
 *   stop, devices  ------>  loads them
 *                     <---  commit; resumes the VM
 *   execve  ...........................................  starts
 *                           state + descriptors  ---->  starts up
 *                           (the VM runs on)  <-------  ready
 *                           stop, devices  ---------->  loads them
 *                           _exit  <------------------  commit; resumes
 *                                                       the VM, answers
 *                                                       cprsave
 *
 * The guest pauses twice, each time as long as a transfer, instead of
 * once for the whole start-up of the new QEMU.  R reads nothing from the
 * QMP connections it holds for P (their clients get its events), is
 * started without -pidfile, and runs the VM in the run state it had,
 * -S or not; so does P's new binary.  Until R commits, failures are
 * transfer mode's: the VM runs on in P, which answers cprsave.
 */

#include "qemu/osdep.h"
#include <sys/wait.h>
#include "qapi/error.h"
#include "qemu/coroutine.h"
#include "qemu/error-report.h"
#include "qemu/main-loop.h"
#include "cpr-internal.h"
#include "trace.h"

/*
 * CPR state entry from P to R ("to") and from R to P's new binary
 * ("back"): which leg of a relay the process taking the VM is
 */
#define CPR_RELAY_NAME "cpr-relay"

/*
 * Set for the running binary when P cannot execute the new one: why,
 * for P's cprsave answer
 */
#define CPR_RELAY_ERROR_ENV "QEMU_CPR_RELAY_ERROR"

/* In a process taking the VM: the relay leg it is on */
static enum { CPR_RELAY_NONE, CPR_RELAY_TO, CPR_RELAY_BACK } cpr_relay_leg;
static char *cpr_relay_failed;

/* The process that hands a VM over marks the leg in the state it sends */
void cpr_relay_mark(bool to, bool keep)
{
    cpr_keep_str(CPR_RELAY_NAME, to ? "to" : "back", keep);
}

void cpr_relay_incoming(void)
{
    g_autofree char *leg = cpr_take_str(CPR_RELAY_NAME);

    cpr_relay_leg = !leg ? CPR_RELAY_NONE :
                    !strcmp(leg, "to") ? CPR_RELAY_TO : CPR_RELAY_BACK;
    if (cpr_relay_leg == CPR_RELAY_BACK && getenv(CPR_RELAY_ERROR_ENV)) {
        cpr_relay_failed = g_strdup(getenv(CPR_RELAY_ERROR_ENV));
    }
    g_unsetenv(CPR_RELAY_ERROR_ENV);
}

const char *cpr_relay_error(void)
{
    return cpr_relay_failed;
}

bool cpr_relay_leg_incoming(void)
{
    return cpr_relay_leg != CPR_RELAY_NONE;
}

bool cpr_transfer_relaying(void)
{
    return cpr_relay_leg == CPR_RELAY_TO;
}

/* @argv without "-pidfile FILE": the file stays with P */
static char **cpr_relay_argv(const char *channel, bool pidfile)
{
    GPtrArray *v = g_ptr_array_new();
    char **arg;

    for (arg = cpr_get_argv(); *arg; arg++) {
        if (!pidfile && arg[1] && (!strcmp(*arg, "-pidfile") ||
                                   !strcmp(*arg, "--pidfile"))) {
            arg++;
            continue;
        }
        g_ptr_array_add(v, g_strdup(*arg));
    }
    g_ptr_array_add(v, g_strdup("-incoming"));
    g_ptr_array_add(v, g_strdup_printf("cpr:%s", channel));
    g_ptr_array_add(v, NULL);
    return (char **)g_ptr_array_free(v, false);
}

/* Only @fd of the descriptors above stderr crosses the next execve */
static void cpr_relay_cloexec_all_but(int fd)
{
    if (close_range(STDERR_FILENO + 1, ~0U, CLOSE_RANGE_CLOEXEC) < 0) {
        int i, max = sysconf(_SC_OPEN_MAX);

        for (i = STDERR_FILENO + 1; i < max; i++) {
            fcntl(i, F_SETFD, FD_CLOEXEC);
        }
    }
    fcntl(fd, F_SETFD, 0);
}

int cpr_relay_spawn(const char *binary, Error **errp)
{
    g_autofree char *channel = NULL;
    g_auto(GStrv) argv = NULL;
    int sv[2], ep[2], status = 0, err = 0;
    ssize_t n;
    pid_t pid, waited = -1;

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        error_setg_errno(errp, errno, "cannot create a socket pair");
        return -1;
    }
    /* Where a failed execve says why; closed by one that succeeds */
    if (!g_unix_open_pipe(ep, FD_CLOEXEC, NULL)) {
        error_setg_errno(errp, errno, "cannot create a pipe");
        close(sv[0]);
        close(sv[1]);
        return -1;
    }
    channel = g_strdup_printf("fd:%d", sv[1]);
    argv = cpr_relay_argv(channel, false);
    /*
     * Twice, so that R is nobody's child here: P's new binary would not
     * reap it.  Between fork and execve, async-signal-safe calls only.
     */
    pid = fork();
    if (pid == 0) {
        pid_t relay = fork();

        if (relay != 0) {
            _exit(relay < 0);
        }
        cpr_relay_cloexec_all_but(sv[1]);
        execv(binary, argv);
        err = errno;
        if (write(ep[1], &err, sizeof(err))) {
            /* nothing else to do */
        }
        _exit(127);
    }
    close(sv[1]);
    close(ep[1]);
    if (pid > 0) {
        TFR(waited = waitpid(pid, &status, 0));
    }
    if (pid < 0 || waited < 0 || status) {
        error_setg_errno(errp, pid < 0 ? errno : 0,
                         "cannot start the relay QEMU");
        goto fail;
    }
    TFR(n = read(ep[0], &err, sizeof(err)));
    if (n == sizeof(err)) {
        error_setg_errno(errp, err, "cannot execute '%s'", binary);
        goto fail;
    }
    close(ep[0]);
    trace_cpr_relay_spawned(binary, sv[0]);
    return sv[0];

fail:
    close(ep[0]);
    close(sv[0]);
    return -1;
}

void cpr_relay_exec(int fd, const char *binary)
{
    g_autofree char *channel = g_strdup_printf("fd:%d", fd);
    g_auto(GStrv) argv = cpr_relay_argv(channel, true);

    g_autofree char *why = NULL;

    cpr_relay_cloexec_all_but(fd);
    trace_cpr_exec(binary);
    execv(binary, argv);
    why = g_strdup_printf("cannot execute '%s': %s; the VM is back in the "
                          "binary that ran it", binary, strerror(errno));
    error_report("cprsave relay: %s", why);
    /* The relay waits to hand the VM back; the running binary can take it */
    g_setenv(CPR_RELAY_ERROR_ENV, why, true);
    execv("/proc/self/exe", argv);
    error_report("cprsave relay: cannot execute /proc/self/exe (%s); the VM "
                 "stays in the relay process", strerror(errno));
    _exit(1);
}

/*
 * R cannot hand the VM back: it runs the VM on, in its own PID, and
 * answers cprsave with what happened
 */
static void cpr_relay_keep(Error *err)
{
    cpr_relay_failed = g_strdup_printf("the new QEMU did not take the VM "
        "back from the relay process (%s); the VM runs on in the relay, "
        "process %d", error_get_pretty(err), getpid());
    error_free(err);
    error_report("cprsave relay: %s", cpr_relay_failed);
    cpr_relay_leg = CPR_RELAY_NONE;
    cpr_notify(CPR_EVENT_RELAY_KEPT, NULL);
}

/* R: hand the VM back to P's new binary */
typedef struct CprRelayBack {
    int fd;
} CprRelayBack;

static void coroutine_fn cpr_relay_back_co(void *opaque)
{
    CprRelayBack *b = opaque;
    Error *err = NULL;

    if (!cpr_save_relay_back(b->fd, &err)) {
        cpr_relay_keep(err);
    }
    g_free(b);
}

static void cpr_relay_back_bh(void *opaque)
{
    qemu_coroutine_enter(qemu_coroutine_create(cpr_relay_back_co, opaque));
}

void cpr_relay_loaded(int fd, Error *err)
{
    CprRelayBack *b;

    if (fd < 0) {
        cpr_relay_keep(err);
        return;
    }
    b = g_new0(CprRelayBack, 1);
    b->fd = fd;
    /*
     * The VM runs here and this process is done taking it: from the main
     * loop, not from a nested poll of the main context
     */
    aio_bh_schedule_oneshot(iohandler_get_aio_context(), cpr_relay_back_bh,
                            b);
}
