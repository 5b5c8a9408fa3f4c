/*
 * CPR: the helper that holds the old address space across execve, and
 * takes the VM back if the new binary does not come up
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * execve releases the old address space before the new program starts.
 * With guest RAM mapped, the kernel then unmaps every page the guest has
 * touched, which takes time proportional to guest RAM, all of it inside
 * the pause of cprsave.  A helper process created with CLONE_VM shares
 * the address space and holds a reference to it, so execve only drops a
 * reference.
 *
 * The helper keeps exactly the descriptors the new process inherits (the
 * ones execve does not close) and waits on a pipe whose write end the new
 * process inherits as "cpr-mm":
 *
 * - 'r': the new process answered the pending cprsave; keep waiting.
 * - 'k': cprload loaded the state in the new process, which resumes the
 *   guest next (or 'x': the old process could not execve, or the new one
 *   ends on a termination signal, which asks for the end of the VM).
 *   The helper exits; the kernel tears the old address space down in
 *   it, at idle priority, after the pause instead of inside it.
 * - end of file: the new process ended before cprload (its binary is
 *   missing a library, crashed, refused its arguments or the CPR state,
 *   or was told to quit because cprload refused the state).  The helper
 *   executes the binary of the old address space (/proc/self/exe still
 *   names it, even if the file was replaced) with
 *   the same arguments, the same kept descriptors and the same CPR state,
 *   plus CPR_RECOVERY_ENV ("2" if the new process had answered the
 *   pending cprsave, else "1").  That process comes up paused like any new
 *   one, answers the pending cprsave with an error unless the new process
 *   had answered it, and cprload with the same state file resumes the
 *   guest.  Its PID is the helper's.
 *
 * 'k' goes before the guest runs again: once it has run in the new
 * process, the state file is older than its RAM, and only the new
 * process can go on with it.  With cprsave's auto-load that is before
 * the new process answers cprsave.
 *
 * The new process reaps the helper; its pid travels in the CPR state.
 */

#include "qemu/osdep.h"
#include <sched.h>
#include <sys/syscall.h>
#include "qemu/lockable.h"
#include "qemu/thread.h"
#include "qemu/units.h"
#include "qapi/error.h"
#include "migration/cpr.h"
#include "sysemu/runstate.h"
#include "cpr-internal.h"
#include "trace.h"

#define CPR_MM_STACK_SIZE (64 * KiB)
#define CPR_MM_FD_NAME "cpr-mm"

/* Everything the helper uses, prepared before it starts */
typedef struct CprMmHelper {
    int wait_fd;                /* read end of the pipe */
    int ready_fd;               /* tells QEMU the helper is set up */
    int pipe_fd;                /* QEMU's write end: not the helper's */
    int *close_fds;             /* close-on-exec descriptors to drop */
    int nr_close_fds;
    char **argv;
    char **envp;
    char *recovery;             /* value of CPR_RECOVERY_ENV in envp */
    sigset_t sigmask;           /* QEMU's mask, for the recovery exec */
} CprMmHelper;

static CprMmHelper cpr_mm;
static const char cpr_mm_lost[] = "qemu: cprsave restart: the new QEMU "
    "ended before cprload and the old binary cannot be executed again: "
    "the VM is lost\n";
static void *cpr_mm_stack;
static int cpr_mm_pipe = -1;       /* write end, kept across execve */
/* In the new process: the main thread and the monitor I/O thread use it */
static QemuMutex cpr_mm_lock;

/*
 * Runs in the helper, on its own stack in the shared address space, with
 * all signals blocked.  Only raw system calls: the helper shares the
 * memory, including the thread-local storage, of the thread that made it.
 */
static int cpr_mm_helper(void *opaque)
{
    CprMmHelper *h = opaque;
    struct sched_param param = { 0 };
    bool replied = false;
    char c = 0;
    long n;
    int i;

    /* Hold what the new process inherits, nothing else (image locks). */
    for (i = 0; i < h->nr_close_fds; i++) {
        syscall(SYS_close, h->close_fds[i]);
    }
    syscall(SYS_close, h->pipe_fd);
    syscall(SYS_write, h->ready_fd, &c, 1);
    syscall(SYS_close, h->ready_fd);

    for (;;) {
        n = syscall(SYS_read, h->wait_fd, &c, 1);
        if (n < 0) {
            continue;           /* only EINTR, and signals are blocked */
        }
        if (n == 0 || c != 'r') {
            break;
        }
        replied = true;         /* the new process answered cprsave */
    }

    if (n == 0) {
        if (replied) {
            h->recovery[0] = '2';
        }
        /* The new process is gone without a word: take the VM back. */
        syscall(SYS_close, h->wait_fd);
        syscall(SYS_rt_sigprocmask, SIG_SETMASK, &h->sigmask, NULL,
                _NSIG / 8);
        syscall(SYS_execve, "/proc/self/exe", h->argv, h->envp);
        syscall(SYS_write, 2, cpr_mm_lost, sizeof(cpr_mm_lost) - 1);
    }
    /*
     * The new process has the VM: let go of the kept descriptors (a VFIO
     * group, a tap) at once rather than after the teardown in exit, which
     * runs at idle priority and can take long.
     */
    syscall(SYS_close_range, 0, ~0U, 0);
    /* The teardown of the old address space must not take CPU from QEMU. */
    syscall(SYS_sched_setscheduler, 0, SCHED_IDLE, &param);
    syscall(SYS_exit, 0);
    return 0;
}

static void cpr_mm_free(void)
{
    g_clear_pointer(&cpr_mm.close_fds, g_free);
    g_clear_pointer(&cpr_mm.argv, g_strfreev);
    g_clear_pointer(&cpr_mm.envp, g_strfreev);
    g_clear_pointer(&cpr_mm_stack, g_free);
}

bool cpr_mm_prepare(Error **errp)
{
    int wait[2];

    if (!g_unix_open_pipe(wait, FD_CLOEXEC, NULL)) {
        error_setg_errno(errp, errno, "cannot create a pipe");
        return false;
    }
    cpr_mm.wait_fd = wait[0];
    cpr_mm_pipe = wait[1];
    cpr_save_fd(CPR_MM_FD_NAME, 0, cpr_mm_pipe);
    return true;
}

pid_t cpr_mm_start(Error **errp)
{
    GArray *close_fds = cpr_state_exec_closing_fds();
    g_auto(GStrv) env = g_get_environ();
    int ready[2];
    sigset_t all;
    pid_t pid;
    ssize_t n;
    guint i;
    char c;

    if (!g_unix_open_pipe(ready, FD_CLOEXEC, NULL)) {
        error_setg_errno(errp, errno, "cannot create a pipe");
        return -1;
    }
    /* Everything the helper needs, before it exists */
    cpr_mm.ready_fd = ready[1];
    cpr_mm.pipe_fd = cpr_mm_pipe;
    cpr_mm.nr_close_fds = 0;
    cpr_mm.close_fds = g_new(int, close_fds->len);
    for (i = 0; i < close_fds->len; i++) {
        int fd = g_array_index(close_fds, int, i);

        if (fd != cpr_mm.wait_fd && fd != ready[0] && fd != ready[1]) {
            cpr_mm.close_fds[cpr_mm.nr_close_fds++] = fd;
        }
    }
    cpr_mm.argv = g_strdupv(cpr_get_argv());
    env = g_environ_setenv(env, CPR_RECOVERY_ENV, "1", true);
    /* A test's stop is for the update, not for the process taking back */
    env = g_environ_unsetenv(env, CPR_STOP_AT_ENV);
    cpr_mm.envp = g_steal_pointer(&env);
    for (i = 0; cpr_mm.envp[i]; i++) {
        if (g_str_has_prefix(cpr_mm.envp[i], CPR_RECOVERY_ENV "=")) {
            cpr_mm.recovery = cpr_mm.envp[i] + strlen(CPR_RECOVERY_ENV "=");
        }
    }
    cpr_mm_stack = g_malloc(CPR_MM_STACK_SIZE);

    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &cpr_mm.sigmask);
    pid = clone(cpr_mm_helper, (char *)cpr_mm_stack + CPR_MM_STACK_SIZE,
                CLONE_VM | SIGCHLD, &cpr_mm);
    pthread_sigmask(SIG_SETMASK, &cpr_mm.sigmask, NULL);
    close(ready[1]);
    if (pid < 0) {
        error_setg_errno(errp, errno, "cannot start the address space helper");
        close(ready[0]);
        return -1;
    }
    /* Wait until the helper holds what it should, and no more. */
    while ((n = read(ready[0], &c, 1)) < 0 && errno == EINTR) {
        /* retry */
    }
    close(ready[0]);
    if (n != 1) {
        /* Killed before it was ready: nothing could take the VM back */
        kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
            /* retry */
        }
        error_setg(errp, "the address space helper ended before it was "
                   "ready");
        return -1;
    }
    trace_cpr_mm_hold(pid);
    return pid;
}

static void cpr_mm_tell(int fd, char what)
{
    trace_cpr_mm_tell(what);
    while (write(fd, &what, 1) < 0 && errno == EINTR) {
        /* retry */
    }
    close(fd);
}

void cpr_mm_release(pid_t pid)
{
    cpr_delete_fd(CPR_MM_FD_NAME, 0);
    cpr_mm_tell(cpr_mm_pipe, 'x');
    cpr_mm_pipe = -1;
    close(cpr_mm.wait_fd);
    while (pid > 0 && waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
        /* retry */
    }
    cpr_mm_free();
}

/* New process: tell the helper @what, its last word */
static void cpr_mm_tell_last(char what)
{
    int fd;

    WITH_QEMU_LOCK_GUARD(&cpr_mm_lock) {
        /* No longer ours before it is closed (cpr_mm_early_term) */
        fd = cpr_mm_pipe;
        cpr_mm_pipe = -1;
        if (fd >= 0) {
            cpr_mm_tell(fd, what);
        }
    }
}

void cpr_mm_done(void)
{
    if (cpr_mm_pipe >= 0) {
        cpr_mm_tell_last('k');
    }
}

void cpr_mm_reply_sent(void)
{
    char c = 'r';

    if (cpr_mm_pipe < 0) {
        return;
    }
    WITH_QEMU_LOCK_GUARD(&cpr_mm_lock) {
        if (cpr_mm_pipe >= 0) {
            trace_cpr_mm_tell(c);
            while (write(cpr_mm_pipe, &c, 1) < 0 && errno == EINTR) {
                /* retry */
            }
        }
    }
    cpr_step("restart-replied");
}

/* This process has taken a shutdown request (quit, a signal) */
static bool cpr_mm_shutting_down;

static void cpr_mm_shutdown(Notifier *n, void *opaque)
{
    ShutdownCause cause = *(ShutdownCause *)opaque;

    /*
     * A termination signal (SIGTERM, SIGINT, SIGHUP: virsh destroy,
     * systemctl stop, a terminal closed) asks for the end of the VM, not
     * for the old binary to take it back: the helper lets it go
     */
    if (cause == SHUTDOWN_CAUSE_HOST_SIGNAL && cpr_mm_pipe >= 0) {
        cpr_mm_tell_last('x');
        return;
    }
    cpr_mm_shutting_down = true;
}

static Notifier cpr_mm_shutdown_notifier = { .notify = cpr_mm_shutdown };

/* Main thread: pending, or taken by the main loop already */
bool cpr_mm_handing_back(void)
{
    ShutdownCause cause = qemu_shutdown_requested_get();

    return cpr_mm_pipe >= 0 &&
           ((cause != SHUTDOWN_CAUSE_NONE &&
             cause != SHUTDOWN_CAUSE_HOST_SIGNAL) || cpr_mm_shutting_down);
}

static void cpr_mm_term_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGHUP);
}

/*
 * Old process, before it checks for a shutdown request and executes the
 * new binary: a termination signal from then on stays pending across
 * execve, and the new process takes it (cpr_mm_incoming())
 */
void cpr_mm_block_term(void)
{
    sigset_t set;

    cpr_mm_term_signals(&set);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
}

void cpr_mm_unblock_term(void)
{
    sigset_t set;

    cpr_mm_term_signals(&set);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

/*
 * A termination signal before QEMU has its own handlers (early in the
 * start-up of the new process): the VM ends, as it would later
 */
static void cpr_mm_early_term(int sig)
{
    int fd = qatomic_read(&cpr_mm_pipe);
    char c = 'x';

    if (fd >= 0 && write(fd, &c, 1) != 1) {
        /* the helper is gone: nothing to tell */
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

static void *cpr_mm_reap_thread(void *opaque)
{
    pid_t pid = (uintptr_t)opaque;

    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
        /* retry */
    }
    trace_cpr_mm_reaped(pid);
    return NULL;
}

void cpr_mm_incoming(pid_t pid)
{
    QemuThread thread;

    if (cpr_is_recovery()) {
        /* The helper was this process; its pipe end went with it. */
        cpr_forget_fd(CPR_MM_FD_NAME, 0);
        return;
    }
    qemu_mutex_init(&cpr_mm_lock);
    cpr_mm_pipe = cpr_take_fd(CPR_MM_FD_NAME, 0);
    if (cpr_mm_pipe >= 0) {
        struct sigaction act = { .sa_handler = cpr_mm_early_term };

        qemu_register_shutdown_notifier(&cpr_mm_shutdown_notifier);
        /* Until os_setup_signal_handling() puts QEMU's own in place */
        sigaction(SIGTERM, &act, NULL);
        sigaction(SIGINT, &act, NULL);
        sigaction(SIGHUP, &act, NULL);
    }
    /* Held back across execve (cpr_mm_block_term()): delivered now */
    cpr_mm_unblock_term();
    if (pid > 0) {
        qemu_thread_create(&thread, "cpr-reap", cpr_mm_reap_thread,
                           (void *)(uintptr_t)pid, QEMU_THREAD_DETACHED);
    }
}
