/*
 * The host side of syzkaller's QEMU snapshot mode, reproduced: what
 * syzkaller's vm/qemu does around its executor, driving our executor
 * tests/guest/syz-guest.c, for a test or a benchmark.
 *
 *   syz-host [-n INPUTS] [-s SECONDS] [-p PAGES] [-f MB] [-1] [-k]
 *            [-S] [-w SECONDS] [-c CPU] -- QEMU-COMMAND...
 *
 * As syzkaller does, it makes a memfd for the input/output memory and
 * one for the doorbell device, an eventfd (semaphore) and a unix socket
 * in its work directory; it appends syzkaller's snapshot arguments to
 * the QEMU command it is given:
 *
 *   -cpu host,migratable=on,tsc=off
 *   -chardev socket,path=DIR/ivs.sock,id=snapshot-doorbell
 *   -device ivshmem-doorbell,master=on,vectors=1,chardev=snapshot-doorbell
 *   -device ivshmem-plain,master=on,memdev=snapshot-shmem
 *   -object memory-backend-file,size=...,share=on,discard-data=on,
 *           id=snapshot-shmem,mem-path=/proc/PID/fd/N
 *
 * plus a QMP socket; it answers the doorbell device's connection as
 * ivshmem-server would (protocol version 0, VM id 0, the doorbell memfd,
 * the eventfd as peer 1's vector 0).  Then, over QMP's
 * human-monitor-command as syzkaller: state Handshake and wait for the
 * guest, "migrate_set_capability x-ignore-shared on", "savevm syz",
 * "info snapshots", state Snapshotted and wait; and for every input:
 * write it, state Execute, "loadvm syz", wait on the eventfd for the
 * state to change, and check the output.
 *
 * -1: one device, ivshmem-doorbell (id snapshot-doorbell), whose own
 * memory (the doorbell memfd) carries input and output; -k: expect the
 * doorbell's state to go on across loadvm (IntrMask as the input before
 * left it) instead of coming back as at the snapshot; -c: another -cpu
 * (TCG has no "host"); -f: MiB of guest RAM the guest fills before the
 * snapshot; -p: pages each input writes; -n, -s: how many inputs, for
 * how long at most (the first to end); -S: no x-ignore-shared (what the
 * snapshot leaves alone is then only what it is told to exclude); -w:
 * how long to wait for the executor's answer to an input (30 s).
 *
 * Prints one line "syz-host: inputs=... seconds=... rate=...
 * loadvm-median-ms=... failed=..." and exits 0 if every input gave the
 * expected output.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

#include "syz-abi.h"

#define MAX_ARGS        256
#define INPUT_LEN       1000            /* words */

static char dir[] = "/tmp/syz-host-XXXXXX";
static char sock_path[128], qmp_path[128];
static pid_t qemu_pid;
static int qmp = -1;
static int event_fd;
/* Shared with the guest behind the compiler's back */
typedef volatile struct syz_header shared_header;
typedef volatile struct syz_output shared_output;   /* the same */

static uint8_t *shm;
static shared_header *hdr;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2),
                                                      noreturn));

/* The work directory and what is in it, gone */
static void clean_up(void)
{
    if (*sock_path) {
        unlink(sock_path);
        unlink(qmp_path);
        rmdir(dir);
    }
}

static void die(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fprintf(stderr, "syz-host: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    if (qemu_pid > 0) {
        kill(qemu_pid, SIGKILL);
        waitpid(qemu_pid, NULL, 0);
    }
    clean_up();
    exit(2);
}

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int make_memfd(const char *name, size_t size)
{
    int fd = memfd_create(name, 0);

    if (fd < 0 || ftruncate(fd, size) < 0) {
        die("memfd %s: %s", name, strerror(errno));
    }
    return fd;
}

static int unix_socket(const char *path, int listening)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    if (listening) {
        if (bind(s, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
            listen(s, 1) < 0) {
            die("listen on %s: %s", path, strerror(errno));
        }
        return s;
    }
    if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(s);
        return -1;
    }
    return s;
}

/* One message of ivshmem's server protocol: a number, maybe a fd */
static void ivshmem_send(int conn, int64_t value, int fd)
{
    char control[CMSG_SPACE(sizeof(int))] = { 0 };
    struct iovec iov = { &value, sizeof(value) };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };

    if (fd >= 0) {
        struct cmsghdr *cmsg;

        msg.msg_control = control;
        msg.msg_controllen = sizeof(control);
        cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
    }
    if (sendmsg(conn, &msg, 0) != sizeof(value)) {
        die("ivshmem handshake: %s", strerror(errno));
    }
}

/* The doorbell device's connection, answered as syzkaller does */
static int ivshmem_serve(int listener, int doorbell_fd)
{
    struct pollfd p = { listener, POLLIN };
    double deadline = now() + 60;
    int conn;

    while (poll(&p, 1, 100) != 1) {
        if (now() > deadline || waitpid(qemu_pid, NULL, WNOHANG)) {
            qemu_pid = 0;
            die("QEMU did not connect to the doorbell socket");
        }
    }
    conn = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
    if (conn < 0) {
        die("accept: %s", strerror(errno));
    }
    ivshmem_send(conn, 0, -1);                  /* protocol version */
    ivshmem_send(conn, 0, -1);                  /* the VM's id */
    ivshmem_send(conn, -1, doorbell_fd);        /* the shared memory */
    ivshmem_send(conn, SYZ_HOST_PEER, event_fd);   /* peer 1, vector 0 */
    return conn;
}

/* A QMP reply (not an event) into @buf; 0 if QMP went away */
static int qmp_reply(char *buf, size_t len)
{
    static char in[65536];
    static size_t have;
    static int skipping;        /* the rest of a line too long to keep */

    for (;;) {
        char *nl = memchr(in, '\n', have);
        ssize_t n;

        if (nl && skipping) {
            skipping = 0;
            have -= nl + 1 - in;
            memmove(in, nl + 1, have);
            continue;
        }
        if (nl) {
            size_t line = nl - in + 1;
            int event = !!memmem(in, line, "\"event\"", 7);

            if (!event) {
                size_t copy = line < len ? line : len - 1;

                memcpy(buf, in, copy);
                while (copy && (buf[copy - 1] == '\n' ||
                                buf[copy - 1] == '\r')) {
                    copy--;
                }
                buf[copy] = 0;
            }
            memmove(in, nl + 1, have - line);
            have -= line;
            if (!event) {
                return 1;
            }
            continue;
        }
        if (have == sizeof(in)) {
            have = 0;           /* a line too long to matter: dropped */
            skipping = 1;
        }
        n = read(qmp, in + have, sizeof(in) - have);
        if (n <= 0) {
            return 0;
        }
        have += n;
    }
}

/* An HMP command through QMP; its output must be @expect (or NULL: any) */
static void hmp(const char *cmd, const char *expect, char *out, size_t len)
{
    char line[8192], req[512];
    int n = snprintf(req, sizeof(req), "{\"execute\": \"human-monitor-"
                     "command\", \"arguments\": {\"command-line\": \"%s\"}}\n",
                     cmd);

    if (write(qmp, req, n) != n || !qmp_reply(line, sizeof(line))) {
        die("%s: QMP went away", cmd);
    }
    if (expect) {
        char want[512];

        snprintf(want, sizeof(want), "{\"return\": \"%s\"}", expect);
        if (strcmp(line, want)) {
            die("%s: %s", cmd, line);
        }
    }
    if (out) {
        snprintf(out, len, "%s", line);
    }
}

static void qmp_connect(const char *path)
{
    char line[8192];
    const char caps[] = "{\"execute\": \"qmp_capabilities\"}\n";
    double deadline = now() + 60;

    while ((qmp = unix_socket(path, 0)) < 0) {
        if (now() > deadline || waitpid(qemu_pid, NULL, WNOHANG)) {
            qemu_pid = 0;
            die("no QMP socket at %s", path);
        }
        usleep(10000);
    }
    if (!qmp_reply(line, sizeof(line)) ||
        write(qmp, caps, sizeof(caps) - 1) != sizeof(caps) - 1 ||
        !qmp_reply(line, sizeof(line)) || !strstr(line, "\"return\"")) {
        die("QMP did not start");
    }
}

/* Wait for the state to leave @state, as syzkaller does; the new one */
static uint32_t wait_change(uint32_t state, double timeout)
{
    double deadline = now() + timeout;
    struct pollfd p = { event_fd, POLLIN };
    uint64_t v;

    for (;;) {
        if (poll(&p, 1, 100) == 1 && read(event_fd, &v, sizeof(v)) < 0) {
            die("eventfd: %s", strerror(errno));
        }
        if (hdr->state != state) {
            return hdr->state;
        }
        if (now() > deadline) {
            die("the guest left state %u alone for %.0f s", state, timeout);
        }
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static void usage(void)
{
    fprintf(stderr, "usage: syz-host [-n INPUTS] [-s SECONDS] [-p PAGES] "
            "[-f MB] [-1] [-k] [-S] [-w SECONDS] [-c CPU] -- "
            "QEMU-COMMAND...\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *args[MAX_ARGS], *cpu = "host,migratable=on,tsc=off";
    char shm_file[64], buf[8192];
    char obj[256], qmp_arg[160], chardev[192];
    long inputs = 1000, pages = 16, fill_mb = 0;
    double seconds = 1e9, t0, *loadvm_s, *run_s;
    int single = 0, keep = 0, opt, nargs = 0, shm_fd, bell_fd, listener;
    int ignore_shared = 1;
    double wait_s = 30;
    uint32_t expect_mask = SYZ_MASK_SNAPSHOT, state;
    long i, done = 0, failed = 0;

    while ((opt = getopt(argc, argv, "n:s:p:f:1kc:Sw:")) != -1) {
        switch (opt) {
        case 'n':
            inputs = atol(optarg);
            break;
        case 's':
            seconds = atof(optarg);
            break;
        case 'p':
            pages = atol(optarg);
            break;
        case 'f':
            fill_mb = atol(optarg);
            break;
        case '1':
            single = 1;
            break;
        case 'k':
            keep = 1;
            break;
        case 'c':
            cpu = optarg;
            break;
        case 'S':
            ignore_shared = 0;
            break;
        case 'w':
            wait_s = atof(optarg);
            break;
        default:
            usage();
        }
    }
    if (optind >= argc || argc - optind > MAX_ARGS - 20 || inputs < 1) {
        usage();
    }
    if (!mkdtemp(dir)) {
        die("mkdtemp: %s", strerror(errno));
    }
    snprintf(sock_path, sizeof(sock_path), "%s/ivs.sock", dir);
    snprintf(qmp_path, sizeof(qmp_path), "%s/qmp.sock", dir);

    shm_fd = make_memfd("syz-qemu-shmem", SYZ_SHMEM_SIZE);
    bell_fd = single ? shm_fd : make_memfd("syz-qemu-doorbell",
                                           SYZ_DOORBELL_SIZE);
    event_fd = eventfd(0, EFD_SEMAPHORE | EFD_CLOEXEC);
    shm = mmap(NULL, SYZ_SHMEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
               shm_fd, 0);
    if (event_fd < 0 || shm == MAP_FAILED) {
        die("eventfd, mmap: %s", strerror(errno));
    }
    hdr = (shared_header *)(shm + SYZ_HEADER);
    listener = unix_socket(sock_path, 1);

    for (; optind < argc; optind++) {
        args[nargs++] = argv[optind];
    }
    snprintf(shm_file, sizeof(shm_file), "/proc/%d/fd/%d", getpid(), shm_fd);
    snprintf(chardev, sizeof(chardev), "socket,path=%s,id=snapshot-doorbell",
             sock_path);
    snprintf(obj, sizeof(obj), "memory-backend-file,size=%u,share=on,"
             "discard-data=on,id=snapshot-shmem,mem-path=%s",
             SYZ_SHMEM_SIZE, shm_file);
    snprintf(qmp_arg, sizeof(qmp_arg), "unix:%s,server=on,wait=off",
             qmp_path);
    args[nargs++] = "-cpu";
    args[nargs++] = cpu;
    args[nargs++] = "-chardev";
    args[nargs++] = chardev;
    args[nargs++] = "-device";
    if (single) {
        args[nargs++] = "ivshmem-doorbell,id=snapshot-doorbell,master=on,"
                        "vectors=1,chardev=snapshot-doorbell";
    } else {
        args[nargs++] = "ivshmem-doorbell,master=on,vectors=1,"
                        "chardev=snapshot-doorbell";
        args[nargs++] = "-device";
        args[nargs++] = "ivshmem-plain,master=on,memdev=snapshot-shmem";
        args[nargs++] = "-object";
        args[nargs++] = obj;
    }
    args[nargs++] = "-qmp";
    args[nargs++] = qmp_arg;
    args[nargs] = NULL;

    qemu_pid = fork();
    if (qemu_pid == 0) {
        execvp(args[0], (char **)args);
        fprintf(stderr, "syz-host: %s: %s\n", args[0], strerror(errno));
        _exit(127);
    }
    ivshmem_serve(listener, bell_fd);
    qmp_connect(qmp_path);

    /* SetupSnapshot */
    ((struct syz_input *)shm)->pages = fill_mb;
    hdr->state = SYZ_HANDSHAKE;
    state = wait_change(SYZ_HANDSHAKE, 600);
    if (state != SYZ_READY) {
        die("the guest answered the handshake with state %u", state);
    }
    if (ignore_shared) {
        hmp("migrate_set_capability x-ignore-shared on", "", NULL, 0);
    }
    t0 = now();
    hmp("savevm syz", "", NULL, 0);
    printf("# savevm: %.1f ms\n", (now() - t0) * 1e3);
    hmp("info snapshots", NULL, buf, sizeof(buf));
    printf("# info snapshots: %s\n", buf);
    hdr->state = SYZ_SNAPSHOTTED;
    state = wait_change(SYZ_SNAPSHOTTED, 60);
    if (state != SYZ_READY) {
        die("the guest answered Snapshotted with state %u", state);
    }

    /* RunSnapshot, for every input */
    loadvm_s = calloc(inputs, sizeof(double));
    run_s = calloc(inputs, sizeof(double));
    t0 = now();
    for (i = 1; i <= inputs && now() - t0 < seconds; i++) {
        struct syz_input *in = (struct syz_input *)shm;
        shared_output *out = (shared_output *)(shm + SYZ_OUTPUT);
        uint32_t sum = 0, k;
        double t1;

        in->seq = i;
        in->pages = pages;
        in->len = INPUT_LEN;
        for (k = 0; k < INPUT_LEN; k++) {
            in->data[k] = i * 31 + k;
            sum += in->data[k];
        }
        memset((void *)out, 0, sizeof(*out));
        hdr->output_offset = 0;
        hdr->output_size = 0;
        hdr->state = SYZ_EXECUTE;
        t1 = now();
        hmp("loadvm syz", "", NULL, 0);
        loadvm_s[done] = now() - t1;
        state = wait_change(SYZ_EXECUTE, wait_s);
        run_s[done++] = now() - t1;
        if (state != SYZ_EXECUTED || hdr->output_size != sizeof(*out) ||
            out->seq != i || out->sum != sum * (uint32_t)i || out->errors ||
            out->runs != 1 || out->intrmask != expect_mask) {
            if (failed++ < 5) {
                printf("# input %ld: state %u, output seq %u sum %u (want "
                       "%u) errors %u (last %u) runs %u intrmask 0x%x (want "
                       "0x%x)\n", i, state, out->seq, out->sum,
                       sum * (uint32_t)i, out->errors, out->last_error,
                       out->runs, out->intrmask, expect_mask);
            }
        }
        if (keep) {
            expect_mask = i;
        }
    }
    t0 = now() - t0;
    if (!done) {
        die("no input ran");
    }
    qsort(loadvm_s, done, sizeof(double), cmp_double);
    qsort(run_s, done, sizeof(double), cmp_double);
    printf("syz-host: inputs=%ld seconds=%.3f rate=%.1f "
           "loadvm-median-ms=%.3f input-median-ms=%.3f failed=%ld\n", done,
           t0, done / t0, loadvm_s[done / 2] * 1e3, run_s[done / 2] * 1e3,
           failed);
    fflush(stdout);

    if (write(qmp, "{\"execute\": \"quit\"}\n", 20) != 20) {
        kill(qemu_pid, SIGKILL);
    }
    waitpid(qemu_pid, NULL, 0);
    clean_up();
    return failed ? 1 : 0;
}
