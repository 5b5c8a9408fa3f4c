/*
 * The host side of syzkaller's QEMU snapshot mode, reproduced: what
 * syzkaller's vm/qemu does around its executor, driving our executor
 * tests/guest/syz-guest.c, for a test or a benchmark.
 *
 *   syz-host [-n INPUTS] [-s SECONDS] [-p PAGES] [-f MB] [-1] [-k]
 *            [-S] [-w SECONDS] [-c CPU] [-F WORKERS] -- QEMU-COMMAND...
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
 * -F N: parallel workers from VM fork instead (implies -1; the command
 * needs -machine memfd-alloc=on).  After the handshake the VM becomes a
 * fork point (cpr-fork, its doorbell device excluded: each VM keeps its
 * own shared memory) and N children started with the same command plus
 * "-incoming cpr-fork:unix:DIR/fork.sock", each with its own memory,
 * doorbell and eventfd, run inputs at the same time, each going back to
 * the fork point with cpr-fork-reset before every input; -n and -s are
 * per worker.
 *
 * Prints one line "syz-host: inputs=... seconds=... rate=...
 * loadvm-median-ms=... input-median-ms=... failed=..." (with -F, over
 * all workers; the restore is then cpr-fork-reset), then the Pss of
 * each QEMU ("syz-host: pss-kb vm|parent|worker KB"), and exits 0 if
 * every input gave the expected output.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
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
#define MAX_VMS         17              /* a parent and 16 workers */
#define INPUT_LEN       1000            /* words */

/* Shared with the guest behind the compiler's back */
typedef volatile struct syz_header shared_header;
typedef volatile struct syz_output shared_output;   /* the same */

/* One QEMU and what the host shares with it */
typedef struct Vm {
    int index;                  /* 0: the first (the fork parent) */
    pid_t pid;
    char sock_path[128];        /* the doorbell's server socket */
    char qmp_path[128];
    char shm_file[64];          /* /proc/PID/fd/N of shm_fd */
    int listener, qmp, event_fd, shm_fd, bell_fd;
    uint8_t *shm;
    shared_header *hdr;
    char in[65536];             /* QMP bytes read, not yet a line */
    size_t have;
    int skipping;               /* the rest of a line too long to keep */
    uint32_t first_sum;         /* a fork worker's first input, run at once */
    /* results of its inputs */
    long done, failed;
    double *restore_s, *run_s;
} Vm;

/* What every run shares: options and the QEMU command */
static struct {
    long inputs, pages;
    double seconds, wait_s;
    int keep, single;
    const char *args[MAX_ARGS];
    int nargs;
} opt = { .inputs = 1000, .pages = 16, .seconds = 1e9, .wait_s = 30 };

static char dir[] = "/tmp/syz-host-XXXXXX";
static Vm vms[MAX_VMS];
static int nvms;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2),
                                                      noreturn));

/* The work directory and what is in it, gone */
static void clean_up(void)
{
    char path[192];
    int i;

    for (i = 0; i < nvms; i++) {
        unlink(vms[i].sock_path);
        unlink(vms[i].qmp_path);
    }
    snprintf(path, sizeof(path), "%s/fork.sock", dir);
    unlink(path);
    rmdir(dir);
}

static void die(const char *fmt, ...)
{
    static pthread_mutex_t dying = PTHREAD_MUTEX_INITIALIZER;
    va_list ap;
    int i;

    /* The first thread to fail ends it all; the others wait for that */
    pthread_mutex_lock(&dying);
    va_start(ap, fmt);
    fprintf(stderr, "syz-host: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    for (i = 0; i < nvms; i++) {
        if (vms[i].pid > 0) {
            kill(vms[i].pid, SIGKILL);
        }
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

/* QEMU @vm exited (it is reaped then) */
static int vm_gone(Vm *vm)
{
    if (vm->pid > 0 && waitpid(vm->pid, NULL, WNOHANG) == vm->pid) {
        vm->pid = 0;
    }
    return vm->pid <= 0;
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
static void ivshmem_serve(Vm *vm)
{
    struct pollfd p = { vm->listener, POLLIN };
    double deadline = now() + 60;
    int conn;

    while (poll(&p, 1, 100) != 1) {
        if (now() > deadline || vm_gone(vm)) {
            die("QEMU %d did not connect to the doorbell socket", vm->index);
        }
    }
    conn = accept4(vm->listener, NULL, NULL, SOCK_CLOEXEC);
    if (conn < 0) {
        die("accept: %s", strerror(errno));
    }
    ivshmem_send(conn, 0, -1);                  /* protocol version */
    ivshmem_send(conn, 0, -1);                  /* the VM's id */
    ivshmem_send(conn, -1, vm->bell_fd);        /* the shared memory */
    ivshmem_send(conn, SYZ_HOST_PEER, vm->event_fd); /* peer 1, vector 0 */
    /* QEMU keeps the connection for peers that come and go: none here */
}

/* A QMP reply (not an event) into @buf; 0 if QMP went away */
static int qmp_reply(Vm *vm, char *buf, size_t len)
{
    for (;;) {
        char *nl = memchr(vm->in, '\n', vm->have);
        ssize_t n;

        if (nl && vm->skipping) {
            vm->skipping = 0;
            vm->have -= nl + 1 - vm->in;
            memmove(vm->in, nl + 1, vm->have);
            continue;
        }
        if (nl) {
            size_t line = nl - vm->in + 1;
            int event = !!memmem(vm->in, line, "\"event\"", 7);

            if (!event) {
                size_t copy = line < len ? line : len - 1;

                memcpy(buf, vm->in, copy);
                while (copy && (buf[copy - 1] == '\n' ||
                                buf[copy - 1] == '\r')) {
                    copy--;
                }
                buf[copy] = 0;
            }
            memmove(vm->in, nl + 1, vm->have - line);
            vm->have -= line;
            if (!event) {
                return 1;
            }
            continue;
        }
        if (vm->have == sizeof(vm->in)) {
            vm->have = 0;       /* a line too long to matter: dropped */
            vm->skipping = 1;
        }
        n = read(vm->qmp, vm->in + vm->have, sizeof(vm->in) - vm->have);
        if (n <= 0) {
            return 0;
        }
        vm->have += n;
    }
}

/* A QMP command; its reply must be @expect (or NULL: any) */
static void qmp(Vm *vm, const char *cmd, const char *expect, char *out,
                size_t len)
{
    char line[8192];
    size_t n = strlen(cmd);

    if (write(vm->qmp, cmd, n) != n || write(vm->qmp, "\n", 1) != 1 ||
        !qmp_reply(vm, line, sizeof(line))) {
        die("%s: QMP of QEMU %d went away", cmd, vm->index);
    }
    if (expect && strcmp(line, expect)) {
        die("%s: %s", cmd, line);
    }
    if (out) {
        snprintf(out, len, "%s", line);
    }
}

/* An HMP command through QMP; its output must be @expect (or NULL: any) */
static void hmp(Vm *vm, const char *cmd, const char *expect, char *out,
                size_t len)
{
    char req[512], want[512];

    snprintf(req, sizeof(req), "{\"execute\": \"human-monitor-command\", "
             "\"arguments\": {\"command-line\": \"%s\"}}", cmd);
    snprintf(want, sizeof(want), "{\"return\": \"%s\"}", expect ?: "");
    qmp(vm, req, expect ? want : NULL, out, len);
}

static void qmp_connect(Vm *vm)
{
    char line[8192];
    double deadline = now() + 60;

    while ((vm->qmp = unix_socket(vm->qmp_path, 0)) < 0) {
        if (now() > deadline || vm_gone(vm)) {
            die("no QMP socket at %s", vm->qmp_path);
        }
        usleep(10000);
    }
    if (!qmp_reply(vm, line, sizeof(line))) {
        die("QMP of QEMU %d did not start", vm->index);
    }
    qmp(vm, "{\"execute\": \"qmp_capabilities\"}", "{\"return\": {}}",
        NULL, 0);
}

/* Wait for the state to leave @state, as syzkaller does; the new one */
static uint32_t wait_change(Vm *vm, uint32_t state, double timeout)
{
    double deadline = now() + timeout;
    struct pollfd p = { vm->event_fd, POLLIN };
    uint64_t v;

    for (;;) {
        if (poll(&p, 1, 100) == 1 && read(vm->event_fd, &v, sizeof(v)) < 0) {
            die("eventfd: %s", strerror(errno));
        }
        if (vm->hdr->state != state) {
            return vm->hdr->state;
        }
        if (now() > deadline) {
            die("the guest of QEMU %d left state %u alone for %.0f s",
                vm->index, state, timeout);
        }
    }
}

/* The memory, doorbell and sockets of VM @index */
static void vm_prepare(Vm *vm, int index)
{
    vm->index = index;
    snprintf(vm->sock_path, sizeof(vm->sock_path), "%s/ivs%d.sock", dir,
             index);
    snprintf(vm->qmp_path, sizeof(vm->qmp_path), "%s/qmp%d.sock", dir,
             index);
    vm->shm_fd = make_memfd("syz-qemu-shmem", SYZ_SHMEM_SIZE);
    vm->bell_fd = opt.single ? vm->shm_fd
                             : make_memfd("syz-qemu-doorbell",
                                          SYZ_DOORBELL_SIZE);
    vm->event_fd = eventfd(0, EFD_SEMAPHORE | EFD_CLOEXEC);
    vm->shm = mmap(NULL, SYZ_SHMEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
                   vm->shm_fd, 0);
    if (vm->event_fd < 0 || vm->shm == MAP_FAILED) {
        die("eventfd, mmap: %s", strerror(errno));
    }
    vm->hdr = (shared_header *)(vm->shm + SYZ_HEADER);
    vm->listener = unix_socket(vm->sock_path, 1);
    snprintf(vm->shm_file, sizeof(vm->shm_file), "/proc/%d/fd/%d",
             getpid(), vm->shm_fd);
    vm->restore_s = calloc(opt.inputs, sizeof(double));
    vm->run_s = calloc(opt.inputs, sizeof(double));
}

/* Start QEMU for @vm: the command, syzkaller's arguments, @more */
static void vm_start(Vm *vm, const char *cpu, const char *more)
{
    const char *args[MAX_ARGS];
    char obj[256], qmp_arg[160], chardev[192];
    int n = opt.nargs;

    memcpy(args, opt.args, n * sizeof(args[0]));
    snprintf(chardev, sizeof(chardev), "socket,path=%s,id=snapshot-doorbell",
             vm->sock_path);
    snprintf(obj, sizeof(obj), "memory-backend-file,size=%u,share=on,"
             "discard-data=on,id=snapshot-shmem,mem-path=%s",
             SYZ_SHMEM_SIZE, vm->shm_file);
    snprintf(qmp_arg, sizeof(qmp_arg), "unix:%s,server=on,wait=off",
             vm->qmp_path);
    args[n++] = "-cpu";
    args[n++] = cpu;
    args[n++] = "-chardev";
    args[n++] = chardev;
    args[n++] = "-device";
    if (opt.single) {
        args[n++] = "ivshmem-doorbell,id=snapshot-doorbell,master=on,"
                    "vectors=1,chardev=snapshot-doorbell";
    } else {
        args[n++] = "ivshmem-doorbell,master=on,vectors=1,"
                    "chardev=snapshot-doorbell";
        args[n++] = "-device";
        args[n++] = "ivshmem-plain,master=on,memdev=snapshot-shmem";
        args[n++] = "-object";
        args[n++] = obj;
    }
    args[n++] = "-qmp";
    args[n++] = qmp_arg;
    if (more) {
        args[n++] = "-incoming";
        args[n++] = more;
    }
    args[n] = NULL;

    vm->pid = fork();
    if (vm->pid == 0) {
        execvp(args[0], (char **)args);
        fprintf(stderr, "syz-host: %s: %s\n", args[0], strerror(errno));
        _exit(127);
    }
    ivshmem_serve(vm);
    qmp_connect(vm);
}

/* Input @seq into @vm's memory, state Execute; the sum the guest owes */
static uint32_t write_input(Vm *vm, long seq)
{
    struct syz_input *in = (struct syz_input *)vm->shm;
    shared_output *out = (shared_output *)(vm->shm + SYZ_OUTPUT);
    uint32_t sum = 0, k;

    in->seq = seq;
    in->pages = opt.pages;
    in->len = INPUT_LEN;
    for (k = 0; k < INPUT_LEN; k++) {
        in->data[k] = seq * 31 + k;
        sum += in->data[k];
    }
    memset((void *)out, 0, sizeof(*out));
    vm->hdr->output_offset = 0;
    vm->hdr->output_size = 0;
    vm->hdr->state = SYZ_EXECUTE;
    return sum * (uint32_t)seq;
}

/* The executor's answer to input @seq, as it must be; counted */
static void check_output(Vm *vm, long seq, uint32_t state, uint32_t sum,
                         uint32_t expect_mask)
{
    shared_output *out = (shared_output *)(vm->shm + SYZ_OUTPUT);

    if (state != SYZ_EXECUTED || vm->hdr->output_size != sizeof(*out) ||
        out->seq != seq || out->sum != sum || out->errors ||
        out->runs != 1 || out->intrmask != expect_mask) {
        if (vm->failed++ < 5) {
            printf("# QEMU %d, input %ld: state %u, output seq %u sum %u "
                   "(want %u) errors %u (last %u) runs %u intrmask 0x%x "
                   "(want 0x%x)\n", vm->index, seq, state, out->seq,
                   out->sum, sum, out->errors, out->last_error, out->runs,
                   out->intrmask, expect_mask);
        }
    }
}

/*
 * Inputs into @vm until done: each after @restore (HMP loadvm, or
 * cpr-fork-reset for a fork worker); the first one with no restore if
 * @first_sum (the worker runs it from the fork point).
 */
static void run_inputs(Vm *vm, const char *restore, int hmp_restore,
                       long first_sum)
{
    uint32_t expect_mask = SYZ_MASK_SNAPSHOT, state, sum;
    double t0 = now(), t1;
    long seq = 1;

    if (first_sum >= 0) {
        state = wait_change(vm, SYZ_EXECUTE, opt.wait_s);
        check_output(vm, seq++, state, first_sum, expect_mask);
    }
    for (; seq <= opt.inputs && now() - t0 < opt.seconds; seq++) {
        sum = write_input(vm, seq);
        t1 = now();
        if (hmp_restore) {
            hmp(vm, restore, "", NULL, 0);
        } else {
            qmp(vm, restore, "{\"return\": {}}", NULL, 0);
        }
        vm->restore_s[vm->done] = now() - t1;
        state = wait_change(vm, SYZ_EXECUTE, opt.wait_s);
        vm->run_s[vm->done++] = now() - t1;
        check_output(vm, seq, state, sum, expect_mask);
        if (opt.keep) {
            expect_mask = seq;
        }
    }
}

static void *worker(void *opaque)
{
    Vm *vm = opaque;

    run_inputs(vm, "{\"execute\": \"cpr-fork-reset\"}", 0, vm->first_sum);
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static double median(double *v, long n)
{
    qsort(v, n, sizeof(double), cmp_double);
    return n ? v[n / 2] : 0;
}

static long pss_kb(pid_t pid)
{
    char path[64], line[256];
    long kb = -1;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", pid);
    f = fopen(path, "r");
    while (f && fgets(line, sizeof(line), f)) {
        if (sscanf(line, "Pss: %ld kB", &kb) == 1) {
            break;
        }
    }
    if (f) {
        fclose(f);
    }
    return kb;
}

static void usage(void)
{
    fprintf(stderr, "usage: syz-host [-n INPUTS] [-s SECONDS] [-p PAGES] "
            "[-f MB] [-1] [-k] [-S] [-w SECONDS] [-c CPU] [-F WORKERS] -- "
            "QEMU-COMMAND...\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *cpu = "host,migratable=on,tsc=off";
    char buf[8192], fork_arg[160], cmd[512];
    long fill_mb = 0, i, done = 0, failed = 0;
    int o, ignore_shared = 1, workers = 0;
    double t0, *restore_s, *run_s;
    pthread_t threads[MAX_VMS];
    Vm *vm = &vms[0];
    uint32_t state;

    while ((o = getopt(argc, argv, "n:s:p:f:1kc:Sw:F:")) != -1) {
        switch (o) {
        case 'n':
            opt.inputs = atol(optarg);
            break;
        case 's':
            opt.seconds = atof(optarg);
            break;
        case 'p':
            opt.pages = atol(optarg);
            break;
        case 'f':
            fill_mb = atol(optarg);
            break;
        case '1':
            opt.single = 1;
            break;
        case 'k':
            opt.keep = 1;
            break;
        case 'c':
            cpu = optarg;
            break;
        case 'S':
            ignore_shared = 0;
            break;
        case 'w':
            opt.wait_s = atof(optarg);
            break;
        case 'F':
            workers = atoi(optarg);
            opt.single = 1;
            break;
        default:
            usage();
        }
    }
    if (optind >= argc || argc - optind > MAX_ARGS - 24 || opt.inputs < 1 ||
        workers < 0 || workers >= MAX_VMS) {
        usage();
    }
    for (; optind < argc; optind++) {
        opt.args[opt.nargs++] = argv[optind];
    }
    /* A QEMU that went away is an error on its QMP socket, not a signal */
    signal(SIGPIPE, SIG_IGN);
    if (!mkdtemp(dir)) {
        die("mkdtemp: %s", strerror(errno));
    }
    nvms = 1 + workers;
    for (i = 0; i < nvms; i++) {
        vm_prepare(&vms[i], i);
    }
    vm_start(vm, cpu, NULL);

    /* SetupSnapshot */
    ((struct syz_input *)vm->shm)->pages = fill_mb;
    vm->hdr->state = SYZ_HANDSHAKE;
    state = wait_change(vm, SYZ_HANDSHAKE, 600);
    if (state != SYZ_READY) {
        die("the guest answered the handshake with state %u", state);
    }
    if (workers) {
        /* The fork point: the guest waits for its first input */
        snprintf(fork_arg, sizeof(fork_arg), "cpr-fork:unix:%s/fork.sock",
                 dir);
        snprintf(cmd, sizeof(cmd), "{\"execute\": \"cpr-fork\", "
                 "\"arguments\": {\"channel\": \"%s\", \"exclude\": "
                 "[\"snapshot-doorbell\"]}}", fork_arg + 9);
        t0 = now();
        qmp(vm, cmd, "{\"return\": {}}", NULL, 0);
        printf("# cpr-fork: %.1f ms\n", (now() - t0) * 1e3);
        for (i = 1; i < nvms; i++) {
            /* Its first input is there when it runs from the fork point */
            vms[i].first_sum = write_input(&vms[i], 1);
            vm_start(&vms[i], cpu, fork_arg);
        }
        t0 = now();
        for (i = 1; i < nvms; i++) {
            pthread_create(&threads[i], NULL, worker, &vms[i]);
        }
        for (i = 1; i < nvms; i++) {
            pthread_join(threads[i], NULL);
        }
    } else {
        if (ignore_shared) {
            hmp(vm, "migrate_set_capability x-ignore-shared on", "", NULL,
                0);
        }
        t0 = now();
        hmp(vm, "savevm syz", "", NULL, 0);
        printf("# savevm: %.1f ms\n", (now() - t0) * 1e3);
        hmp(vm, "info snapshots", NULL, buf, sizeof(buf));
        printf("# info snapshots: %s\n", buf);
        vm->hdr->state = SYZ_SNAPSHOTTED;
        state = wait_change(vm, SYZ_SNAPSHOTTED, 60);
        if (state != SYZ_READY) {
            die("the guest answered Snapshotted with state %u", state);
        }
        /* RunSnapshot, for every input */
        t0 = now();
        run_inputs(vm, "loadvm syz", 1, -1);
    }
    t0 = now() - t0;

    restore_s = calloc(opt.inputs * nvms, sizeof(double));
    run_s = calloc(opt.inputs * nvms, sizeof(double));
    for (i = workers ? 1 : 0; i < nvms; i++) {
        memcpy(restore_s + done, vms[i].restore_s,
               vms[i].done * sizeof(double));
        memcpy(run_s + done, vms[i].run_s, vms[i].done * sizeof(double));
        done += vms[i].done;
        failed += vms[i].failed;
    }
    if (!done) {
        die("no input ran");
    }
    printf("syz-host: inputs=%ld seconds=%.3f rate=%.1f "
           "loadvm-median-ms=%.3f input-median-ms=%.3f failed=%ld\n", done,
           t0, done / t0, median(restore_s, done) * 1e3,
           median(run_s, done) * 1e3, failed);
    for (i = 0; i < nvms; i++) {
        printf("syz-host: pss-kb %s %ld\n",
               i ? "worker" : workers ? "parent" : "vm", pss_kb(vms[i].pid));
    }
    fflush(stdout);

    for (i = 0; i < nvms; i++) {
        static const char quit[] = "{\"execute\": \"quit\"}\n";

        if (write(vms[i].qmp, quit, sizeof(quit) - 1) != sizeof(quit) - 1) {
            kill(vms[i].pid, SIGKILL);
        }
        waitpid(vms[i].pid, NULL, 0);
    }
    clean_up();
    return failed ? 1 : 0;
}
