/*
 * CPR: let a helper tear down the old address space after execve
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
 * reference.  The write end of a pipe the helper waits on is kept across
 * execve (registered as "cpr-mm"); the new process closes it once cprload
 * has resumed the guest, or the kernel does if the new process dies.  The
 * helper then exits and the kernel tears the old address space down in
 * the helper, at idle priority, after the pause instead of inside it.
 * The new process reaps the helper; its pid travels in the CPR state.
 */

#include "qemu/osdep.h"
#include <sched.h>
#include <sys/syscall.h>
#include "qemu/thread.h"
#include "qemu/units.h"
#include "qapi/error.h"
#include "migration/cpr.h"
#include "cpr-internal.h"
#include "trace.h"

#define CPR_MM_STACK_SIZE (64 * KiB)

#define CPR_MM_FD_NAME "cpr-mm"

static void *cpr_mm_stack;
static int cpr_mm_pipe = -1;       /* write end, kept across execve */

/* Close every descriptor but @a and @b (a < b), with raw system calls. */
static void cpr_mm_close_all_but(unsigned int a, unsigned int b)
{
    if (a > 0) {
        syscall(SYS_close_range, 0, a - 1, 0);
    }
    if (b > a + 1) {
        syscall(SYS_close_range, a + 1, b - 1, 0);
    }
    syscall(SYS_close_range, b + 1, ~0U, 0);
}

/*
 * Runs in the helper, on its own stack in the shared address space, with
 * all signals blocked.  Only raw system calls: the helper shares the
 * memory, including the thread-local storage, of the thread that made it.
 */
static int cpr_mm_helper(void *opaque)
{
    int *fds = opaque;          /* wait (read end), ready (write end) */
    unsigned int wait_fd = fds[0], ready_fd = fds[1];
    struct sched_param idle = { 0 };
    char c = 0;

    /*
     * Its copies of QEMU's descriptors would keep sockets open and image
     * locks held: drop them before QEMU goes on.
     */
    cpr_mm_close_all_but(MIN(wait_fd, ready_fd), MAX(wait_fd, ready_fd));
    syscall(SYS_write, ready_fd, &c, 1);
    syscall(SYS_close, ready_fd);

    /* The teardown must not take CPU time from QEMU. */
    syscall(SYS_sched_setscheduler, 0, SCHED_IDLE, &idle);
    while (syscall(SYS_read, wait_fd, &c, 1) < 0) {
        /* only EINTR can happen, and signals are blocked */
    }
    syscall(SYS_exit, 0);
    return 0;
}

pid_t cpr_mm_hold(Error **errp)
{
    sigset_t all, old;
    int wait[2], ready[2], child_fds[2];
    pid_t pid;
    char c;

    if (!g_unix_open_pipe(wait, FD_CLOEXEC, NULL)) {
        error_setg_errno(errp, errno, "cannot create a pipe");
        return -1;
    }
    if (!g_unix_open_pipe(ready, FD_CLOEXEC, NULL)) {
        error_setg_errno(errp, errno, "cannot create a pipe");
        close(wait[0]);
        close(wait[1]);
        return -1;
    }
    child_fds[0] = wait[0];
    child_fds[1] = ready[1];
    cpr_mm_stack = g_malloc(CPR_MM_STACK_SIZE);
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid = clone(cpr_mm_helper, (char *)cpr_mm_stack + CPR_MM_STACK_SIZE,
                CLONE_VM | SIGCHLD, child_fds);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(wait[0]);
    close(ready[1]);
    if (pid < 0) {
        error_setg_errno(errp, errno, "cannot start the address space helper");
        close(wait[1]);
        close(ready[0]);
        g_clear_pointer(&cpr_mm_stack, g_free);
        return -1;
    }
    /* Wait until the helper holds nothing but its end of the pipe. */
    while (read(ready[0], &c, 1) < 0 && errno == EINTR) {
        /* retry */
    }
    close(ready[0]);
    cpr_mm_pipe = wait[1];
    cpr_save_fd(CPR_MM_FD_NAME, 0, cpr_mm_pipe);
    trace_cpr_mm_hold(pid);
    return pid;
}

void cpr_mm_release(pid_t pid)
{
    cpr_delete_fd(CPR_MM_FD_NAME, 0);
    close(cpr_mm_pipe);
    cpr_mm_pipe = -1;
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
        /* retry */
    }
    g_clear_pointer(&cpr_mm_stack, g_free);
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

void cpr_mm_done(void)
{
    int fd = cpr_find_fd(CPR_MM_FD_NAME, 0);

    if (fd >= 0) {
        close(fd);
    }
}

void cpr_mm_reap(pid_t pid)
{
    QemuThread thread;

    qemu_thread_create(&thread, "cpr-reap", cpr_mm_reap_thread,
                       (void *)(uintptr_t)pid, QEMU_THREAD_DETACHED);
}
