/*
 * What the test programs run inside the L1 guest share (l1-lib.h): TAP
 * output, files, our QEMU run on an L2 guest, its QMP monitor, cprsave
 * and cprload, and the hand-over of a transfer.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "l1-lib.h"

#define CAP_IPC_LOCK    14      /* linux/capability.h */

pid_t qemu_pid;
int qmp = -1;
double ev_stop, ev_resume;
int test_no, failed;
void (*qmp_connect_failed)(void);
static char qmp_buf[65536];
static size_t qmp_len;

void diag(const char *fmt, ...)
{
    va_list ap;

    printf("# ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
}

void result(int ok, const char *name)
{
    printf("%sok %d - %s\n", ok ? "" : "not ", ++test_no, name);
    fflush(stdout);
    failed |= !ok;
}

double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int read_file(const char *path, char *buf, size_t len)
{
    int fd = open(path, O_RDONLY);
    ssize_t n;

    if (fd < 0) {
        return -1;
    }
    n = read(fd, buf, len - 1);
    close(fd);
    if (n < 0) {
        return -1;
    }
    buf[n] = 0;
    return n;
}

int write_file(const char *path, const char *s)
{
    int fd = open(path, O_WRONLY);
    ssize_t n;

    if (fd < 0) {
        return -1;
    }
    n = write(fd, s, strlen(s));
    close(fd);
    return n == (ssize_t)strlen(s) ? 0 : -1;
}


/*
 * Run QEMU with @argv, its output into /tmp/qemu.log.  A QEMU that takes
 * the VM over from the running one (@incoming) keeps its QMP socket; with
 * @memlock_kb >= 0 it may lock only that much memory (no CAP_IPC_LOCK).
 */
pid_t spawn_qemu(const char **argv, int incoming, long memlock_kb)
{
    pid_t pid;
    int fd;

    if (!incoming) {
        unlink(QMP_PATH);
    }
    pid = fork();
    if (pid == 0) {
        fd = open("/tmp/qemu.log", O_WRONLY | O_CREAT | O_APPEND, 0600);
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
        if (memlock_kb >= 0) {
            struct rlimit rl = { memlock_kb * 1024, memlock_kb * 1024 };

            if (prctl(PR_CAPBSET_DROP, CAP_IPC_LOCK, 0, 0, 0) ||
                setrlimit(RLIMIT_MEMLOCK, &rl)) {
                _exit(126);
            }
        }
        execv(QEMU, (char **)argv);
        _exit(127);
    }
    return pid;
}

/*
 * Read one line from QMP; events are noted (STOP/RESUME times) and skipped
 * by qmp_cmd.
 */
static char *qmp_line(void)
{
    char *nl;
    ssize_t n;

    while (!(nl = memchr(qmp_buf, '\n', qmp_len))) {
        if (qmp_len == sizeof(qmp_buf)) {
            return NULL;
        }
        n = read(qmp, qmp_buf + qmp_len, sizeof(qmp_buf) - qmp_len);
        if (n <= 0) {
            return NULL;
        }
        qmp_len += n;
    }
    *nl = 0;
    {
        char *line = strdup(qmp_buf);

        qmp_len -= nl + 1 - qmp_buf;
        memmove(qmp_buf, nl + 1, qmp_len);
        return line;
    }
}

static double event_time(const char *line)
{
    const char *s = strstr(line, "\"seconds\":");
    const char *us = strstr(line, "\"microseconds\":");

    if (!s || !us) {
        return 0;
    }
    return atof(s + 10) + atof(us + 15) / 1e6;
}

/* Send a command; the reply line (caller frees), NULL if QMP went away. */
char *qmp_cmd(const char *fmt, ...)
{
    char cmd[1024], *line;
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(cmd, sizeof(cmd) - 1, fmt, ap);
    va_end(ap);
    cmd[n++] = '\n';
    if (write(qmp, cmd, n) != n) {
        return NULL;
    }
    while ((line = qmp_line()) != NULL) {
        if (!strstr(line, "\"event\"")) {
            return line;
        }
        if (strstr(line, "\"STOP\"")) {
            ev_stop = event_time(line);
        } else if (strstr(line, "\"RESUME\"")) {
            ev_resume = event_time(line);
        }
        free(line);
    }
    return NULL;
}

/* Run a command that must succeed. */
int qmp_ok(const char *fmt, ...)
{
    char cmd[1024], *line;
    va_list ap;
    int ok;

    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    line = qmp_cmd("%s", cmd);
    ok = line && strstr(line, "\"return\"");
    if (!ok) {
        diag("%s -> %s", cmd, line ? line : "(connection lost)");
    }
    free(line);
    return ok;
}

/* QEMU's stderr, for the record when something went wrong */
int qemu_args(const char **argv, char *machine, int memfd,
              const char *kernel)
{
    int i = 0;

    sprintf(machine, "q35,memfd-alloc=%s", memfd ? "on" : "off");
    argv[i++] = QEMU;
    argv[i++] = "-L";
    argv[i++] = "/usr/share/qemu";
    argv[i++] = "-machine";
    argv[i++] = machine;
    argv[i++] = "-accel";
    argv[i++] = "tcg";
    argv[i++] = "-m";
    argv[i++] = "128";
    argv[i++] = "-nodefaults";
    argv[i++] = "-display";
    argv[i++] = "none";
    argv[i++] = "-kernel";
    argv[i++] = kernel;
    argv[i++] = "-qmp";
    argv[i++] = "unix:" QMP_PATH ",server=on,wait=off";
    return i;
}

void show_qemu_log(void)
{
    static char buf[16384];
    char *line;

    if (read_file("/tmp/qemu.log", buf, sizeof(buf)) < 0) {
        return;
    }
    for (line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        diag("qemu: %s", line);
    }
}

int qmp_connect(void)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    double deadline = now() + 120;
    char *greeting;

    strcpy(sa.sun_path, QMP_PATH);
    for (;;) {
        qmp = socket(AF_UNIX, SOCK_STREAM, 0);
        if (connect(qmp, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
            break;
        }
        close(qmp);
        if (now() > deadline || waitpid(qemu_pid, NULL, WNOHANG) != 0) {
            diag("cannot connect to QMP");
            show_qemu_log();
            if (qmp_connect_failed) {
                qmp_connect_failed();
            }
            return -1;
        }
        usleep(50000);
    }
    qmp_len = 0;
    greeting = qmp_line();
    free(greeting);
    if (!qmp_ok("{\"execute\": \"qmp_capabilities\"}")) {
        show_qemu_log();
        if (qmp_connect_failed) {
            qmp_connect_failed();
        }
        return -1;
    }
    return 0;
}

void stop_qemu(void)
{
    if (qmp >= 0) {
        close(qmp);
        qmp = -1;
    }
    if (qemu_pid > 0) {
        kill(qemu_pid, SIGKILL);
        waitpid(qemu_pid, NULL, 0);
        qemu_pid = 0;
    }
}

/* The L2 guest's mailbox (at MAILBOX), @len bytes of it */
int read_mem(void *mb, size_t len)
{
    int fd, ok;

    if (!qmp_ok("{\"execute\": \"pmemsave\", \"arguments\": {\"val\": %d,"
                " \"size\": %zu, \"filename\": \"/tmp/mb\"}}",
                MAILBOX, len)) {
        return -1;
    }
    fd = open("/tmp/mb", O_RDONLY);
    ok = fd >= 0 && read(fd, mb, len) == (ssize_t)len;
    if (fd >= 0) {
        close(fd);
    }
    return ok ? 0 : -1;
}

int cprsave(void)
{
    ev_stop = ev_resume = 0;
    if (!qmp_ok("{\"execute\": \"cprsave\", \"arguments\": {\"file\": \""
                STATE "\", \"mode\": \"restart\"}}")) {
        show_qemu_log();
        return -1;
    }
    return 0;
}

int cprload(void)
{
    if (!qmp_ok("{\"execute\": \"cprload\", \"arguments\": {\"file\": \""
                STATE "\"}}")) {
        show_qemu_log();
        return -1;
    }
    return 0;
}

int cprsave_mode_refused(const char *mode, const char *extra,
                                const char *expect)
{
    char *line = qmp_cmd("{\"execute\": \"cprsave\", \"arguments\": {\"file\":"
                         " \"" STATE "\", \"mode\": \"%s\"%s}}", mode, extra);
    int ok = line && strstr(line, expect);

    if (!ok) {
        diag("cprsave%s: %s", extra, line ? line : "(connection lost)");
    }
    free(line);
    return ok;
}

int cprsave_refused(const char *extra, const char *expect)
{
    return cprsave_mode_refused("restart", extra, expect);
}

int make_not_a_program(void)
{
    int fd = open(NOT_A_PROGRAM, O_WRONLY | O_CREAT | O_TRUNC, 0700);
    int ok = fd >= 0 && write(fd, "#!/nonexistent/qemu\n", 20) == 20;

    if (fd >= 0) {
        close(fd);
    }
    return ok;
}

/* Wait up to @timeout s for @pid to exit; its wait status, or -1. */
int wait_exit(pid_t pid, double timeout)
{
    double deadline = now() + timeout;
    int status;

    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (now() > deadline) {
            return -1;
        }
        usleep(10000);
    }
    return status;
}

/*
 * cprsave transfer to @new_pid, a new QEMU started with the running one's
 * arguments and "-incoming cpr:unix:" CPR_SOCK.  0 once the new process
 * runs the VM, answered cprsave on the same QMP connection and the old
 * one exited with 0; 1 if cprsave failed naming @refused, the new process
 * exited with 1 and the old one runs on; -1 otherwise.
 */
int transfer_to(pid_t new_pid, const char *refused)
{
    double deadline = now() + 120;
    struct stat st;
    char *line;
    int status, ret = -1;

    while (stat(CPR_SOCK, &st) < 0) {
        if (now() > deadline || waitpid(new_pid, NULL, WNOHANG) != 0) {
            diag("the new QEMU does not listen on " CPR_SOCK);
            show_qemu_log();
            return -1;
        }
        usleep(10000);
    }
    ev_stop = ev_resume = 0;
    line = qmp_cmd("{\"execute\": \"cprsave\", \"arguments\": {\"mode\": "
                   "\"transfer\", \"channel\": \"unix:" CPR_SOCK "\"}}");
    if (!refused && line && strstr(line, "\"return\"")) {
        status = wait_exit(qemu_pid, 10);
        if (status == 0) {
            qemu_pid = new_pid;
            ret = 0;
        } else {
            diag("the old QEMU did not exit with 0 (wait status %d)", status);
        }
    } else if (refused && line && strstr(line, refused)) {
        status = wait_exit(new_pid, 10);
        if (WIFEXITED(status) && WEXITSTATUS(status) == 1) {
            ret = 1;
        } else {
            diag("the new QEMU did not exit with 1 (wait status %d)", status);
        }
    } else {
        diag("cprsave transfer: %s", line ? line : "(connection lost)");
    }
    free(line);
    if (ret < 0) {
        show_qemu_log();
        if (new_pid != qemu_pid) {
            kill(new_pid, SIGKILL);
            waitpid(new_pid, NULL, 0);
        }
    }
    unlink(CPR_SOCK);
    return ret;
}
