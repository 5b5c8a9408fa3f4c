/*
 * Tests of cprsave/cprload (live update of QEMU by execve)
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The guest (tests/guest/cpr-guest.S, path in CPR_GUEST_IMG) adds one to
 * a counter in every page of its RAM, pass after pass, and writes a
 * character to the serial port after each pass.  QEMU is started and
 * driven here directly over a QMP socket, because the process must be
 * able to execve itself: the QMP connection is kept across cprsave and
 * the new process, which has the same PID, answers on it.
 *
 * Environment: QTEST_QEMU_BINARY (QEMU), CPR_GUEST_IMG (guest image),
 * CPR_TEST_ACCEL (comma-separated accelerators to run every case under,
 * default tcg).
 */

#include "qemu/osdep.h"
#include <linux/if_tun.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include "qemu/bswap.h"
#include "qemu/cutils.h"
#include "qemu/units.h"
#include "qapi/error.h"
#include "qapi/qmp/json-parser.h"
#include "qapi/qmp/qdict.h"
#include "qapi/qmp/qjson.h"
#include "qapi/qmp/qlist.h"
#include "qapi/qmp/qobject.h"
#include "qapi/qmp/qstring.h"

#define GUEST_RAM_MB    128
#define COUNTER_START   (2 * MiB)       /* first page the guest counts in */
#define COUNTER_PAGES   ((32 * MiB - COUNTER_START) / 4096)
#define WAIT_SECONDS    60

typedef struct CprVm {
    GPtrArray *argv;            /* its command line, for a transfer's twin */
    char *dir;
    char *qmp_path;
    char *serial_path;
    char *state_path;
    pid_t pid;
    int qmp_fd;
    int console_fd;             /* client of a console socket, or -1 */
    size_t console_len;         /* bytes read from it */
    JSONMessageParser parser;
    GQueue msgs;
    int resumes;                /* RESUME events seen */
    QDict *checkpoint_done;     /* CPR_CHECKPOINT_COMPLETED's data, if seen */
    int64_t taken_back;         /* CPR_TAKEN_BACK's pid, if seen */
} CprVm;

static const char *test_accel;     /* accelerator of the running case */

static const char *accel(void)
{
    return test_accel;
}

/* QMP client */

static void vm_emit(void *opaque, QObject *json, Error *err)
{
    CprVm *vm = opaque;

    g_assert(!err);
    g_queue_push_tail(&vm->msgs, json);
}

/* Next message from QEMU, or NULL at end of file. */
static QDict *vm_receive(CprVm *vm)
{
    while (g_queue_is_empty(&vm->msgs)) {
        char buf[4096];
        ssize_t n = read(vm->qmp_fd, buf, sizeof(buf));

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return NULL;
        }
        json_message_parser_feed(&vm->parser, buf, n);
    }
    return qobject_to(QDict, g_queue_pop_head(&vm->msgs));
}

static void vm_disconnect(CprVm *vm)
{
    QObject *obj;

    qobject_unref(vm->checkpoint_done);
    vm->checkpoint_done = NULL;
    if (vm->qmp_fd >= 0) {
        close(vm->qmp_fd);
        vm->qmp_fd = -1;
        json_message_parser_destroy(&vm->parser);
    }
    while ((obj = g_queue_pop_head(&vm->msgs))) {
        qobject_unref(obj);
    }
}

static void vm_send(CprVm *vm, QDict *cmd)
{
    g_autoptr(GString) s = qobject_to_json(QOBJECT(cmd));
    size_t off = 0;

    g_string_append_c(s, '\n');
    while (off < s->len) {
        ssize_t n = write(vm->qmp_fd, s->str + off, s->len - off);

        g_assert(n > 0);
        off += n;
    }
}

/* Keep what the tests look at from event @ev, and drop it */
static void vm_note_event(CprVm *vm, QDict *ev)
{
    const char *name = qdict_get_str(ev, "event");

    vm->resumes += !strcmp(name, "RESUME");
    if (!strcmp(name, "CPR_TAKEN_BACK")) {
        vm->taken_back = qdict_get_int(qdict_get_qdict(ev, "data"), "pid");
    }
    if (!strcmp(name, "CPR_CHECKPOINT_COMPLETED")) {
        g_assert(!vm->checkpoint_done);
        vm->checkpoint_done = qdict_get_qdict(ev, "data");
        qobject_ref(vm->checkpoint_done);
    }
    qobject_unref(ev);
}

/* The reply to the command sent last, events noted; NULL at EOF. */
static QDict *vm_reply(CprVm *vm)
{
    QDict *resp;

    while ((resp = vm_receive(vm))) {
        if (!qdict_haskey(resp, "event")) {
            return resp;
        }
        vm_note_event(vm, resp);
    }
    return NULL;
}

/*
 * The reply to a request sent before, which must come within @secs
 * seconds: a request the VM lost would hang the test otherwise.
 */
static QDict *vm_reply_within(CprVm *vm, int secs)
{
    gint64 deadline = g_get_monotonic_time() + secs * G_USEC_PER_SEC;
    struct pollfd pfd = { .fd = vm->qmp_fd, .events = POLLIN };
    QDict *resp;

    for (;;) {
        while ((resp = g_queue_pop_head(&vm->msgs))) {
            if (!qdict_haskey(resp, "event")) {
                return resp;
            }
            vm_note_event(vm, resp);
        }
        if (poll(&pfd, 1, 100) == 1) {
            char buf[4096];
            ssize_t n = read(vm->qmp_fd, buf, sizeof(buf));

            g_assert(n > 0);
            json_message_parser_feed(&vm->parser, buf, n);
        } else if (g_get_monotonic_time() > deadline) {
            g_error("no reply within %d s: the request was lost", secs);
        }
    }
}

/* Send a command; return its reply ("return" or "error"), NULL at EOF. */
static QDict *vm_vqmp(CprVm *vm, const char *fmt, va_list ap)
{
    QDict *cmd = qobject_to(QDict, qobject_from_vjsonf_nofail(fmt, ap));

    vm_send(vm, cmd);
    qobject_unref(cmd);
    return vm_reply(vm);
}

static QDict *vm_qmp(CprVm *vm, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static QDict *vm_qmp(CprVm *vm, const char *fmt, ...)
{
    va_list ap;
    QDict *resp;

    va_start(ap, fmt);
    resp = vm_vqmp(vm, fmt, ap);
    va_end(ap);
    return resp;
}

/* A command that must succeed; returns the "return" member (owned). */
static QObject *vm_ok(CprVm *vm, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static QObject *vm_ok(CprVm *vm, const char *fmt, ...)
{
    va_list ap;
    QDict *resp;
    QObject *ret;

    va_start(ap, fmt);
    resp = vm_vqmp(vm, fmt, ap);
    va_end(ap);
    g_assert(resp);
    if (!qdict_haskey(resp, "return")) {
        g_autoptr(GString) s = qobject_to_json(QOBJECT(resp));

        g_error("%s failed: %s", fmt, s->str);
    }
    ret = qdict_get(resp, "return");
    qobject_ref(ret);
    qobject_unref(resp);
    return ret;
}

/* A command that must fail; returns the error's description. */
static char *vm_error(QDict *resp)
{
    char *desc;

    g_assert(resp);
    g_assert(qdict_haskey(resp, "error"));
    desc = g_strdup(qdict_get_str(qdict_get_qdict(resp, "error"), "desc"));
    qobject_unref(resp);
    return desc;
}

/* QEMU is still there (a child of ours, or a daemon that is not) */
static bool vm_alive(CprVm *vm)
{
    pid_t ret = waitpid(vm->pid, NULL, WNOHANG);

    return ret == 0 || (ret < 0 && errno == ECHILD && kill(vm->pid, 0) == 0);
}

/*
 * Connect to QEMU's QMP socket and negotiate capabilities.  Right after
 * cprsave the old process may still hold the listening socket while
 * execve closes its descriptors; such a connection is reset before the
 * greeting, and the next attempt reaches the new process.
 */
static void vm_connect_caps(CprVm *vm, bool oob)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    gint64 deadline = g_get_monotonic_time() + WAIT_SECONDS * G_USEC_PER_SEC;
    QDict *greeting = NULL;

    g_assert(vm->qmp_fd < 0);
    pstrcpy(addr.sun_path, sizeof(addr.sun_path), vm->qmp_path);
    while (!greeting) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

        g_assert(fd >= 0);
        if (!connect(fd, (struct sockaddr *)&addr, sizeof(addr))) {
            vm->qmp_fd = fd;
            json_message_parser_init(&vm->parser, vm_emit, vm, NULL);
            greeting = vm_receive(vm);
            if (greeting) {
                break;
            }
            vm_disconnect(vm);
        } else {
            close(fd);
        }
        g_assert(vm_alive(vm));
        g_assert(g_get_monotonic_time() < deadline);
        g_usleep(1000);
    }
    /*
     * QEMU 7.2 sends events to a QMP monitor on a mux chardev before its
     * greeting if the client connected early (RESUME at start-up).
     */
    while (qdict_haskey(greeting, "event")) {
        qobject_unref(greeting);
        greeting = vm_receive(vm);
        g_assert(greeting);
    }
    g_assert(qdict_haskey(greeting, "QMP"));
    qobject_unref(greeting);
    if (oob) {
        qobject_unref(vm_ok(vm, "{'execute': 'qmp_capabilities',"
                            " 'arguments': {'enable': ['oob']}}"));
    } else {
        qobject_unref(vm_ok(vm, "{'execute': 'qmp_capabilities'}"));
    }
}

static void vm_connect(CprVm *vm)
{
    vm_connect_caps(vm, false);
}

/* Append @args to @argv, with "@DIR@" replaced by @dir. */
static void add_args(GPtrArray *argv, const char *dir,
                     const char *const *args)
{
    int i;

    for (i = 0; args && args[i]; i++) {
        g_auto(GStrv) parts = g_strsplit(args[i], "@DIR@", -1);

        g_ptr_array_add(argv, g_strjoinv(dir, parts));
    }
}

/*
 * Start QEMU on the guest image.  @machine: -machine value; @keep_fd: a
 * descriptor the child inherits (not close-on-exec), or -1; @extra: more
 * arguments or NULL, where "@DIR@" stands for the VM's directory.  With
 * -daemonize the caller connects once it knows the daemon's pid.
 */
typedef enum {
    CONSOLE_FILE,               /* COM1 into serial.log */
    CONSOLE_SOCKET,             /* COM1 on a unix socket server */
    CONSOLE_PTY,                /* COM1 on a pty */
    CONSOLE_FDSET,              /* COM1 into serial.log, passed by -add-fd */
} CprConsole;

/* The next VM's QMP monitor on a mux chardev (attached late at start-up) */
static bool qmp_on_mux;

static CprVm *vm_start_args(const char *machine, int keep_fd,
                            const char *const *extra, CprConsole console)
{
    CprVm *vm = g_new0(CprVm, 1);
    const char *qemu = getenv("QTEST_QEMU_BINARY");
    const char *img = getenv("CPR_GUEST_IMG");
    g_autofree char *drive = NULL, *serial = NULL, *qmp = NULL, *mem = NULL;
    g_autofree char *disk = NULL, *contents = NULL;
    g_autoptr(GPtrArray) argv = NULL;
    gsize len;
    g_autofree char *acc = g_strdup_printf("%s", accel());

    g_assert(qemu && img);
    vm->dir = g_dir_make_tmp("cpr-test-XXXXXX", NULL);
    g_assert(vm->dir);
    vm->qmp_path = g_build_filename(vm->dir, "qmp.sock", NULL);
    vm->serial_path = g_build_filename(vm->dir, "serial.log", NULL);
    vm->state_path = g_build_filename(vm->dir, "vm.cpr", NULL);
    vm->qmp_fd = -1;
    vm->console_fd = -1;
    g_queue_init(&vm->msgs);

    disk = g_build_filename(vm->dir, "disk.img", NULL);
    g_assert(g_file_get_contents(img, &contents, &len, NULL));
    g_assert(g_file_set_contents(disk, contents, len, NULL));
    drive = g_strdup_printf("file=%s,format=raw", disk);
    serial = console == CONSOLE_SOCKET ? g_strdup("chardev:console") :
             console == CONSOLE_PTY ? g_strdup("pty") :
             console == CONSOLE_FDSET ? g_strdup("file:/dev/fdset/3") :
             g_strdup_printf("file:%s", vm->serial_path);
    qmp = g_strdup_printf("socket,id=qmp,path=%s,server=on,wait=off%s",
                          vm->qmp_path, qmp_on_mux ? ",mux=on" : "");
    mem = g_strdup_printf("%d", GUEST_RAM_MB);

    argv = g_ptr_array_new_with_free_func(g_free);
    add_args(argv, vm->dir, (const char *const []) {
        qemu, "-machine", machine, "-accel", acc, "-m", mem,
        "-display", "none", "-drive", drive, "-serial", serial,
        "-chardev", qmp, "-mon", "chardev=qmp,mode=control", NULL
    });
    if (console == CONSOLE_SOCKET) {
        add_args(argv, vm->dir, (const char *const []) {
            "-chardev", "socket,id=console,path=@DIR@/console.sock,"
            "server=on,wait=off", NULL
        });
    }
    if (console == CONSOLE_FDSET) {
        /* As libvirt passes a serial log file: opened by the manager */
        g_assert(keep_fd < 0);
        keep_fd = open(vm->serial_path, O_WRONLY | O_CREAT | O_APPEND |
                       O_CLOEXEC, 0600);
        g_assert(keep_fd >= 0);
        g_ptr_array_add(argv, g_strdup("-add-fd"));
        g_ptr_array_add(argv, g_strdup_printf("fd=%d,set=3,opaque=console",
                                              keep_fd));
    }
    add_args(argv, vm->dir, extra);
    vm->argv = g_ptr_array_new_with_free_func(g_free);
    for (guint i = 0; i < argv->len; i++) {
        g_ptr_array_add(vm->argv, g_strdup(g_ptr_array_index(argv, i)));
    }
    g_ptr_array_add(argv, NULL);

    vm->pid = fork();
    g_assert(vm->pid >= 0);
    if (vm->pid == 0) {
        /* Do not outlive a failed test (kept across execve) */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (keep_fd >= 0) {
            fcntl(keep_fd, F_SETFD, 0);
        }
        execv(qemu, (char **)argv->pdata);
        _exit(127);
    }
    if (console == CONSOLE_FDSET) {
        close(keep_fd);
    }
    if (!g_strv_contains((const char *const *)argv->pdata, "-daemonize")) {
        vm_connect(vm);
    }
    return vm;
}

static CprVm *vm_start(const char *machine, int keep_fd)
{
    return vm_start_args(machine, keep_fd, NULL, CONSOLE_FILE);
}

static void vm_transfer_cleanup(CprVm *vm);
static pid_t vm_start_incoming(CprVm *vm, const char *const *extra);
static void vm_transfer(CprVm *vm, pid_t new_pid);

static void vm_kill(CprVm *vm)
{
    g_autofree char *disk = g_build_filename(vm->dir, "disk.img", NULL);
    g_autofree char *console = g_build_filename(vm->dir, "console.sock",
                                                NULL);

    vm_disconnect(vm);
    if (vm->console_fd >= 0) {
        close(vm->console_fd);
    }
    unlink(console);
    if (vm->pid > 0) {
        kill(vm->pid, SIGKILL);
        waitpid(vm->pid, NULL, 0);
    }
    unlink(vm->qmp_path);
    unlink(vm->serial_path);
    unlink(vm->state_path);
    unlink(disk);
    vm_transfer_cleanup(vm);
    rmdir(vm->dir);
    g_free(vm->dir);
    g_free(vm->qmp_path);
    g_free(vm->serial_path);
    g_free(vm->state_path);
    g_ptr_array_unref(vm->argv);
    g_free(vm);
}

/* Run a human monitor command; returns its output. */
static char *vm_hmp(CprVm *vm, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static char *vm_hmp(CprVm *vm, const char *fmt, ...)
{
    va_list ap;
    g_autofree char *line = NULL;
    QObject *ret;
    char *out;

    va_start(ap, fmt);
    line = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    ret = vm_ok(vm, "{'execute': 'human-monitor-command', 'arguments':"
                " {'command-line': %s}}", line);
    out = g_strdup(qstring_get_str(qobject_to(QString, ret)));
    qobject_unref(ret);
    return out;
}

static const char *vm_status(CprVm *vm)
{
    static char status[32];
    QDict *ret = qobject_to(QDict, vm_ok(vm, "{'execute': 'query-status'}"));

    pstrcpy(status, sizeof(status), qdict_get_str(ret, "status"));
    qobject_unref(ret);
    return status;
}

static size_t vm_serial_len(CprVm *vm)
{
    struct stat st;
    char buf[4096];
    ssize_t n;

    if (vm->console_fd < 0) {
        return stat(vm->serial_path, &st) ? 0 : st.st_size;
    }
    /* The console connection must never end (pty: EIO, socket: EOF). */
    while ((n = read(vm->console_fd, buf, sizeof(buf))) > 0) {
        vm->console_len += n;
    }
    g_assert(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
    return vm->console_len;
}

/* Wait until the guest has finished @passes more passes over its RAM. */
static void vm_wait_passes(CprVm *vm, size_t passes)
{
    size_t target = vm_serial_len(vm) + passes;
    gint64 deadline = g_get_monotonic_time() + WAIT_SECONDS * G_USEC_PER_SEC;

    while (vm_serial_len(vm) < target) {
        g_assert(g_get_monotonic_time() < deadline);
        g_usleep(10 * 1000);
    }
}

/* The counters of the guest's pages, read with pmemsave. */
static uint64_t *vm_counters(CprVm *vm)
{
    g_autofree char *path = g_build_filename(vm->dir, "mem", NULL);
    g_autofree char *data = NULL;
    uint64_t *counters = g_new(uint64_t, COUNTER_PAGES);
    gsize len;
    size_t i;

    qobject_unref(vm_ok(vm, "{'execute': 'pmemsave', 'arguments':"
                        " {'val': %lld, 'size': %lld, 'filename': %s}}",
                        (long long)COUNTER_START,
                        (long long)COUNTER_PAGES * 4096, path));
    g_assert(g_file_get_contents(path, &data, &len, NULL));
    g_assert_cmpuint(len, ==, COUNTER_PAGES * 4096);
    unlink(path);
    for (i = 0; i < COUNTER_PAGES; i++) {
        counters[i] = ldq_le_p(data + i * 4096);
    }
    return counters;
}

/* @vm's counters are exactly @want (it has not run since) */
static void check_counters_are(CprVm *vm, const uint64_t *want)
{
    g_autofree uint64_t *now = vm_counters(vm);

    g_assert(!memcmp(now, want, COUNTER_PAGES * sizeof(uint64_t)));
}

/* All counters within one pass of each other, the guest's invariant. */
static void check_consistent(const uint64_t *c)
{
    uint64_t lo = c[0], hi = c[0];
    size_t i;

    for (i = 1; i < COUNTER_PAGES; i++) {
        lo = MIN(lo, c[i]);
        hi = MAX(hi, c[i]);
    }
    g_assert_cmpuint(lo, >, 0);
    g_assert_cmpuint(hi - lo, <=, 1);
}

static void check_not_behind(const uint64_t *before, const uint64_t *after)
{
    size_t i;

    for (i = 0; i < COUNTER_PAGES; i++) {
        if (after[i] < before[i]) {
            g_error("page %zu: counter %" PRIu64 " went back to %" PRIu64,
                    i, before[i], after[i]);
        }
    }
}

static void check_moving(CprVm *vm, const uint64_t *before)
{
    g_autofree uint64_t *now = NULL;

    vm_wait_passes(vm, 2);
    now = vm_counters(vm);
    g_assert_cmpuint(now[0], >, before[0]);
    check_consistent(now);
}

/* @resp answers cprsave (id 'save', over QMP or HMP) with success */
static void check_save_reply(QDict *resp, bool hmp)
{
    g_assert(resp);
    if (!qdict_haskey(resp, "return")) {
        g_autoptr(GString) s = qobject_to_json(QOBJECT(resp));

        g_error("cprsave failed: %s", s->str);
    }
    g_assert_cmpstr(qdict_get_str(resp, "id"), ==, "save");
    if (hmp) {
        g_assert_cmpstr(qdict_get_str(resp, "return"), ==, "");
    }
    qobject_unref(resp);
}

/*
 * cprsave restart: the process executes the new binary, which keeps the
 * QMP connection and answers the command; the PID stays the same and the
 * new process waits for cprload.
 */
static void vm_cprsave_restart_via(CprVm *vm, bool hmp)
{
    g_autofree char *line = g_strdup_printf("cprsave %s restart",
                                            vm->state_path);
    QDict *resp = hmp ?
        vm_qmp(vm, "{'execute': 'human-monitor-command', 'arguments':"
               " {'command-line': %s}, 'id': 'save'}", line) :
        vm_qmp(vm, "{'execute': 'cprsave', 'arguments':"
               " {'file': %s, 'mode': 'restart'}, 'id': 'save'}",
               vm->state_path);
    QDict *info;

    check_save_reply(resp, hmp);
    g_assert(vm_alive(vm));
    info = qobject_to(QDict, vm_ok(vm, "{'execute': 'query-cpr'}"));
    g_assert(qdict_get_bool(info, "load-pending"));
    qobject_unref(info);
    g_assert_cmpstr(vm_status(vm), ==, "inmigrate");
}

static void vm_cprsave_restart(CprVm *vm)
{
    vm_cprsave_restart_via(vm, false);
}

static void vm_cprload(CprVm *vm, const char *file)
{
    QDict *info;

    qobject_unref(vm_ok(vm, "{'execute': 'cprload', 'arguments':"
                        " {'file': %s}}", file));
    info = qobject_to(QDict, vm_ok(vm, "{'execute': 'query-cpr'}"));
    g_assert(!qdict_get_bool(info, "load-pending"));
    qobject_unref(info);
}

static char *memfd_machine(void)
{
    return g_strdup("q35,memfd-alloc=on");
}

/*
 * After an update: no page counter behind @before, all within one pass,
 * and the guest still moving.  Returns the counters read after the update.
 */
static uint64_t *check_kept(CprVm *vm, const uint64_t *before)
{
    uint64_t *after = vm_counters(vm);

    check_not_behind(before, after);
    check_consistent(after);
    check_moving(vm, after);
    return after;
}

/* check_kept() against *@before, which then holds the counters now */
static void check_kept_update(CprVm *vm, uint64_t **before)
{
    uint64_t *after = check_kept(vm, *before);

    g_free(*before);
    *before = after;
}

/*
 * -serial file:PATH after an update: what the guest had written (the
 * @len bytes of @log) is still the file's start, and with @grew the
 * guest wrote more
 */
static void check_log_kept(CprVm *vm, const char *log, gsize len, bool grew)
{
    g_autofree char *now = NULL;
    gsize now_len;

    g_assert(g_file_get_contents(vm->serial_path, &now, &now_len, NULL));
    g_assert_cmpuint(now_len, >=, len + grew);
    g_assert(!memcmp(log, now, len));
}

/* Child processes of @pid (zombies included) */
static int count_children(pid_t pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/task/%d/children",
                                            pid, pid);
    g_autofree char *data = NULL;
    g_auto(GStrv) pids = NULL;

    g_assert(g_file_get_contents(path, &data, NULL, NULL));
    pids = g_strsplit(g_strstrip(data), " ", -1);
    return *data ? g_strv_length(pids) : 0;
}

static void vm_wait_no_children(CprVm *vm)
{
    gint64 deadline = g_get_monotonic_time() + WAIT_SECONDS * G_USEC_PER_SEC;

    while (count_children(vm->pid)) {
        g_assert(g_get_monotonic_time() < deadline);
        g_usleep(10 * 1000);
    }
}

/* Tests */

static void test_round_trip(void)
{
    g_autofree char *machine = memfd_machine();
    CprVm *vm = vm_start(machine, -1);
    g_autofree uint64_t *before = NULL, *after = NULL;
    pid_t pid = vm->pid;
    int i;

    /* Enough console output that a truncated log cannot catch up */
    vm_wait_passes(vm, 20);
    for (i = 0; i < 3; i++) {
        g_autofree char *log = NULL;
        gsize log_len;

        g_free(before);
        before = vm_counters(vm);
        check_consistent(before);
        /* -serial file:PATH: what the guest wrote before stays */
        g_assert(g_file_get_contents(vm->serial_path, &log, &log_len, NULL));
        /* The second update goes through the human monitor. */
        vm_cprsave_restart_via(vm, i == 1);
        g_assert_cmpint(vm->pid, ==, pid);
        /* The old address space is held until cprload, then reaped. */
        g_assert_cmpint(count_children(pid), ==, 1);
        if (i == 2) {
            /* A second cprsave before cprload is refused. */
            g_autofree char *err = vm_error(vm_qmp(vm,
                "{'execute': 'cprsave', 'arguments': {'file': %s,"
                " 'mode': 'restart'}}", vm->state_path));

            g_assert_cmpstr(err, ==, "this process is waiting for cprload; "
                            "load the state before saving it again");
        }
        if (i == 1) {
            g_autofree char *out = vm_hmp(vm, "cprload %s", vm->state_path);

            g_assert_cmpstr(out, ==, "");
        } else {
            vm_cprload(vm, vm->state_path);
        }
        g_assert_cmpstr(vm_status(vm), ==, "running");

        check_log_kept(vm, log, log_len, false);

        g_free(after);
        after = check_kept(vm, before);
        vm_wait_no_children(vm);
    }
    vm_kill(vm);
}

/* Write @text into @path, executable */
static void write_script(const char *path, const char *text)
{
    g_assert(g_file_set_contents(path, text, -1, NULL));
    g_assert(chmod(path, 0755) == 0);
}

/*
 * After a few passes of the guest: its page counters into *@before, then
 * cprsave restart of @binary (with auto-load if asked), which must fail;
 * returns the error.
 */
static char *vm_cprsave_binary_fails(CprVm *vm, const char *binary,
                                     bool auto_load, uint64_t **before)
{
    vm_wait_passes(vm, 2);
    *before = vm_counters(vm);
    return vm_error(vm_qmp(vm, "{'execute': 'cprsave', 'arguments':"
                           " {'file': %s, 'mode': 'restart', 'binary': %s,"
                           " 'auto-load': %i}, 'id': 'save'}",
                           vm->state_path, binary, auto_load));
}

/*
 * cprsave auto-load: the new process loads the state by itself and only
 * then answers; no cprload.  A paused VM comes back paused.
 */
static void test_auto_load(void)
{
    g_autofree char *machine = memfd_machine();
    CprVm *vm = vm_start(machine, -1);
    g_autofree uint64_t *before = NULL, *after = NULL;
    g_autofree char *err = NULL;
    pid_t pid = vm->pid;
    QDict *info;
    int i;

    vm_wait_passes(vm, 2);
    for (i = 0; i < 2; i++) {
        if (i == 1) {
            qobject_unref(vm_ok(vm, "{'execute': 'stop'}"));
        }
        g_free(before);
        before = vm_counters(vm);
        qobject_unref(vm_ok(vm, "{'execute': 'cprsave', 'arguments':"
                            " {'file': %s, 'mode': 'restart',"
                            " 'auto-load': true}}", vm->state_path));
        g_assert_cmpint(vm->pid, ==, pid);
        /* Answered once loaded: already in the saved run state */
        g_assert_cmpstr(vm_status(vm), ==, i ? "paused" : "running");
        info = qobject_to(QDict, vm_ok(vm, "{'execute': 'query-cpr'}"));
        g_assert(!qdict_get_bool(info, "load-pending"));
        qobject_unref(info);
        g_free(after);
        after = vm_counters(vm);
        check_not_behind(before, after);
        check_consistent(after);
        vm_wait_no_children(vm);
    }
    g_assert(!memcmp(before, after, COUNTER_PAGES * sizeof(uint64_t)));
    err = vm_error(vm_qmp(vm, "{'execute': 'cprload', 'arguments':"
                          " {'file': %s}}", vm->state_path));
    g_assert(strstr(err, "no CPR restart is waiting to be loaded"));
    qobject_unref(vm_ok(vm, "{'execute': 'cont'}"));
    check_moving(vm, after);
    vm_kill(vm);
}

/*
 * auto-load with the QMP monitor on a mux chardev: its connection is
 * attached only after the load, and still gets cprsave's answer.
 */
static void test_auto_load_mux(void)
{
    g_autofree char *machine = memfd_machine();
    CprVm *vm;
    g_autofree uint64_t *before = NULL;

    qmp_on_mux = true;
    vm = vm_start(machine, -1);
    qmp_on_mux = false;
    vm_wait_passes(vm, 2);
    before = vm_counters(vm);
    qobject_unref(vm_ok(vm, "{'execute': 'cprsave', 'arguments':"
                        " {'file': %s, 'mode': 'restart',"
                        " 'auto-load': true}}", vm->state_path));
    g_assert_cmpstr(vm_status(vm), ==, "running");
    g_free(check_kept(vm, before));
    vm_kill(vm);
}

/*
 * auto-load of a file that turns out corrupt (a wrapper corrupts it
 * before it runs QEMU): cprsave's answer names the problem, and the new
 * process waits for cprload of a good copy.
 */
static void test_auto_load_fails(void)
{
    g_autofree char *machine = memfd_machine();
    CprVm *vm = vm_start(machine, -1);
    g_autofree char *wrapper = g_build_filename(vm->dir, "corrupts", NULL);
    g_autofree char *good = g_build_filename(vm->dir, "good.cpr", NULL);
    /* Flips the bits of the file's byte 4096, then runs QEMU */
    g_autofree char *script = g_strdup_printf(
        "#!/bin/bash\ncp '%s' '%s'\n"
        "b=$(od -An -tu1 -j4096 -N1 '%s')\n"
        "printf \"\\\\$(printf %%o $((b ^ 255)))\" | "
        "dd of='%s' bs=1 seek=4096 conv=notrunc status=none\n"
        "exec '%s' \"$@\"\n", vm->state_path, good, vm->state_path,
        vm->state_path, getenv("QTEST_QEMU_BINARY"));
    g_autofree uint64_t *before = NULL, *after = NULL;
    g_autofree char *err = NULL;
    pid_t pid = vm->pid;
    QDict *info;

    write_script(wrapper, script);
    err = vm_cprsave_binary_fails(vm, wrapper, true, &before);
    g_assert(strstr(err, "the new QEMU could not load the state: "));
    g_assert(strstr(err, "is corrupt"));
    g_assert(strstr(err, "waits for cprload"));
    g_assert_cmpint(vm->pid, ==, pid);
    info = qobject_to(QDict, vm_ok(vm, "{'execute': 'query-cpr'}"));
    g_assert(qdict_get_bool(info, "load-pending"));
    qobject_unref(info);
    g_assert_cmpstr(vm_status(vm), ==, "inmigrate");
    vm_cprload(vm, good);
    g_assert_cmpstr(vm_status(vm), ==, "running");
    after = check_kept(vm, before);
    vm_wait_no_children(vm);
    vm_kill(vm);
}

/* Main RAM from an explicit memfd or shared file backend */
static void test_backends(void)
{
    static const char *const memfd[] = {
        "-object", "memory-backend-memfd,id=mem,size=128M", NULL
    };
    static const char *const file[] = {
        "-object", "memory-backend-file,id=mem,size=128M,share=on,"
        "mem-path=@DIR@/guest-ram", NULL
    };
    const char *const *backends[] = { memfd, file };
    size_t i;

    for (i = 0; i < ARRAY_SIZE(backends); i++) {
        CprVm *vm = vm_start_args("q35,memfd-alloc=on,memory-backend=mem",
                                  -1, backends[i], CONSOLE_FILE);
        g_autofree uint64_t *before = NULL, *after = NULL;
        g_autofree char *ram = g_build_filename(vm->dir, "guest-ram", NULL);

        vm_wait_passes(vm, 2);
        before = vm_counters(vm);
        vm_cprsave_restart(vm);
        vm_cprload(vm, vm->state_path);
        g_assert_cmpstr(vm_status(vm), ==, "running");
        after = check_kept(vm, before);
        unlink(ram);
        vm_kill(vm);
    }
}

/* The pty path QEMU gave COM1 */
static char *vm_pty_path(CprVm *vm)
{
    QList *list = qobject_to(QList, vm_ok(vm, "{'execute': 'query-chardev'}"));
    QListEntry *e;
    char *path = NULL;

    QLIST_FOREACH_ENTRY(list, e) {
        QDict *c = qobject_to(QDict, qlist_entry_obj(e));

        if (!strcmp(qdict_get_str(c, "label"), "serial0")) {
            g_assert(g_str_has_prefix(qdict_get_str(c, "filename"), "pty:"));
            path = g_strdup(qdict_get_str(c, "filename") + 4);
        }
    }
    qobject_unref(list);
    g_assert(path);
    return path;
}

/* Connect to COM1: a unix socket or a pty */
static void vm_console_open(CprVm *vm, CprConsole console)
{
    g_autofree char *path = NULL;

    if (console == CONSOLE_PTY) {
        path = vm_pty_path(vm);
        vm->console_fd = open(path, O_RDWR | O_NOCTTY | O_NONBLOCK |
                              O_CLOEXEC);
    } else {
        struct sockaddr_un addr = { .sun_family = AF_UNIX };

        path = g_build_filename(vm->dir, "console.sock", NULL);
        pstrcpy(addr.sun_path, sizeof(addr.sun_path), path);
        vm->console_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        g_assert(vm->console_fd >= 0);
        g_assert(connect(vm->console_fd, (struct sockaddr *)&addr,
                         sizeof(addr)) == 0);
        g_assert(g_unix_set_fd_nonblocking(vm->console_fd, true, NULL));
    }
    g_assert(vm->console_fd >= 0);
}

/* A client of a serial console on a unix socket or a pty stays connected */
static void test_console(CprConsole console)
{
    g_autofree char *machine = memfd_machine();
    CprVm *vm = vm_start_args(machine, -1, NULL, console);
    g_autofree uint64_t *before = NULL, *after = NULL;
    g_autofree char *pty = NULL;
    int i;

    vm_console_open(vm, console);
    if (console == CONSOLE_PTY) {
        pty = vm_pty_path(vm);
    }
    vm_wait_passes(vm, 3);
    for (i = 0; i < 2; i++) {
        g_free(before);
        before = vm_counters(vm);
        vm_cprsave_restart(vm);
        vm_cprload(vm, vm->state_path);
        if (pty) {
            g_autofree char *now = vm_pty_path(vm);

            g_assert_cmpstr(now, ==, pty);
        }
        /* Progress keeps arriving on the same console connection. */
        vm_wait_passes(vm, 3);
        g_free(after);
        after = vm_counters(vm);
        check_not_behind(before, after);
    }
    vm_kill(vm);
}

/* The fd set of a file passed with -add-fd lists the same */
static char *vm_fdset(CprVm *vm)
{
    QList *sets = qobject_to(QList, vm_ok(vm, "{'execute': 'query-fdsets'}"));
    QDict *set, *fd;
    char *desc;

    g_assert_cmpint(qlist_size(sets), ==, 1);
    set = qobject_to(QDict, qlist_peek(sets));
    g_assert_cmpint(qdict_get_int(set, "fdset-id"), ==, 3);
    g_assert_cmpint(qlist_size(qdict_get_qlist(set, "fds")), ==, 1);
    fd = qobject_to(QDict, qlist_peek(qdict_get_qlist(set, "fds")));
    desc = g_strdup_printf("fd %" PRId64 " %s", qdict_get_int(fd, "fd"),
                           qdict_get_try_str(fd, "opaque"));
    qobject_unref(sets);
    return desc;
}

/*
 * A file handed over with -add-fd, as libvirt passes a serial log: the fd
 * set is rebuilt in the new process and the console keeps appending to
 * the same open file.
 */
static void test_fdset(void)
{
    g_autofree char *machine = memfd_machine();
    CprVm *vm = vm_start_args(machine, -1, NULL, CONSOLE_FDSET);
    g_autofree char *set = vm_fdset(vm), *set_after = NULL;
    g_autofree char *link = NULL, *fd_path = NULL;
    g_autofree uint64_t *before = NULL;

    g_assert(g_str_has_suffix(set, " console"));
    vm_wait_passes(vm, 2);
    before = vm_counters(vm);
    vm_cprsave_restart(vm);
    vm_cprload(vm, vm->state_path);
    set_after = vm_fdset(vm);
    g_assert_cmpstr(set_after, ==, set);
    fd_path = g_strdup_printf("/proc/%d/fd/%s", vm->pid,
                              strchr(set_after, ' ') + 1);
    *strrchr(fd_path, ' ') = 0;
    link = g_file_read_link(fd_path, NULL);
    g_assert_cmpstr(link, ==, vm->serial_path);
    /* Progress keeps arriving in the file through /dev/fdset/3. */
    vm_wait_passes(vm, 3);
    check_moving(vm, before);
    vm_kill(vm);
}

static void test_console_socket(void)
{
    test_console(CONSOLE_SOCKET);
}

static void test_console_pty(void)
{
    test_console(CONSOLE_PTY);
}

static void test_paused_stays_paused(void)
{
    g_autofree char *machine = memfd_machine();
    CprVm *vm = vm_start(machine, -1);
    g_autofree uint64_t *before = NULL, *after = NULL;

    vm_wait_passes(vm, 3);
    qobject_unref(vm_ok(vm, "{'execute': 'stop'}"));
    before = vm_counters(vm);
    check_consistent(before);

    vm_cprsave_restart(vm);
    vm_cprload(vm, vm->state_path);
    g_assert_cmpstr(vm_status(vm), ==, "paused");
    after = vm_counters(vm);
    g_assert(!memcmp(before, after, COUNTER_PAGES * sizeof(uint64_t)));
    g_usleep(200 * 1000);
    g_free(after);
    after = vm_counters(vm);
    g_assert(!memcmp(before, after, COUNTER_PAGES * sizeof(uint64_t)));

    qobject_unref(vm_ok(vm, "{'execute': 'cont'}"));
    check_moving(vm, after);
    vm_kill(vm);
}

/* Guest RAM in a private mapping of a file: no other process can have it */
static const char *const private_ram[] = {
    "-object", "memory-backend-file,id=mem,size=128M,"
    "mem-path=@DIR@/guest-ram", NULL
};

static void test_blocked(void)
{
    CprVm *vm = vm_start_args("q35,memfd-alloc=on,memory-backend=mem", -1,
                              private_ram, CONSOLE_FILE);
    g_autofree char *ram = g_build_filename(vm->dir, "guest-ram", NULL);
    g_autofree uint64_t *before = NULL;
    g_autofree char *err = NULL, *hmp_out = NULL;
    QDict *info;
    QList *blockers;
    QListEntry *e;
    bool found = false;

    vm_wait_passes(vm, 2);
    info = qobject_to(QDict, vm_ok(vm, "{'execute': 'query-cpr'}"));
    blockers = qdict_get_qlist(info, "blockers");
    QLIST_FOREACH_ENTRY(blockers, e) {
        QDict *b = qobject_to(QDict, qlist_entry_obj(e));

        if (!strcmp(qdict_get_str(b, "object"), "mem")) {
            g_assert(strstr(qdict_get_str(b, "reason"), "share=on"));
            found = true;
        }
    }
    g_assert(found);
    qobject_unref(info);
    hmp_out = vm_hmp(vm, "info cpr");
    g_assert(strstr(hmp_out, "modes: restart"));
    g_assert(strstr(hmp_out, "blocker (restart): mem: guest RAM is "
                    "a private mapping"));
    g_free(hmp_out);
    hmp_out = vm_hmp(vm, "cprsave %s restart", vm->state_path);
    g_assert(strstr(hmp_out, "Error: cprsave is blocked by 'mem'"));

    before = vm_counters(vm);
    err = vm_error(vm_qmp(vm, "{'execute': 'cprsave', 'arguments':"
                          " {'file': %s, 'mode': 'restart'}}",
                          vm->state_path));
    g_assert(strstr(err, "blocked by 'mem'"));
    g_assert(!g_file_test(vm->state_path, G_FILE_TEST_EXISTS));
    g_assert_cmpstr(vm_status(vm), ==, "running");
    check_moving(vm, before);
    unlink(ram);
    vm_kill(vm);
}

/*
 * -sandbox spawn=deny (libvirt's default sandbox) would get QEMU killed
 * at execve: it blocks cprsave.  A sandbox that allows spawning does not.
 */
static void test_sandbox(void)
{
    static const char *const deny[] = {
        "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,"
        "resourcecontrol=deny", NULL
    };
    static const char *const allow[] = {
        "-sandbox", "on,obsolete=deny,elevateprivileges=deny,"
        "resourcecontrol=deny", NULL
    };
    g_autofree char *machine = memfd_machine();
    CprVm *vm = vm_start_args(machine, -1, deny, CONSOLE_FILE);
    g_autofree uint64_t *before = NULL;
    g_autofree char *err = NULL;

    vm_wait_passes(vm, 2);
    before = vm_counters(vm);
    err = vm_error(vm_qmp(vm, "{'execute': 'cprsave', 'arguments':"
                          " {'file': %s, 'mode': 'restart'}}",
                          vm->state_path));
    g_assert(g_str_has_prefix(err, "cprsave is blocked by 'sandbox': "
                              "-sandbox spawn=deny"));
    g_assert(!g_file_test(vm->state_path, G_FILE_TEST_EXISTS));
    g_assert_cmpstr(vm_status(vm), ==, "running");
    check_moving(vm, before);
    vm_kill(vm);

    vm = vm_start_args(machine, -1, allow, CONSOLE_FILE);
    vm_wait_passes(vm, 2);
    g_free(before);
    before = vm_counters(vm);
    vm_cprsave_restart(vm);
    vm_cprload(vm, vm->state_path);
    g_assert_cmpstr(vm_status(vm), ==, "running");
    check_moving(vm, before);
    vm_kill(vm);
}

/* cprsave during a migration is refused and the migration goes on. */
static void test_during_migration(void)
{
    g_autofree char *machine = memfd_machine();
    CprVm *vm = vm_start(machine, -1);
    g_autofree uint64_t *before = NULL;
    g_autofree char *err = NULL;
    QDict *info;

    vm_wait_passes(vm, 2);
    qobject_unref(vm_ok(vm, "{'execute': 'migrate-set-parameters',"
                        " 'arguments': {'max-bandwidth': 4096}}"));
    qobject_unref(vm_ok(vm, "{'execute': 'migrate', 'arguments':"
                        " {'uri': 'exec:cat > /dev/null'}}"));
    before = vm_counters(vm);
    err = vm_error(vm_qmp(vm, "{'execute': 'cprsave', 'arguments':"
                          " {'file': %s, 'mode': 'restart'}}",
                          vm->state_path));
    g_assert_cmpstr(err, ==, "a migration is in progress");
    info = qobject_to(QDict, vm_ok(vm, "{'execute': 'query-migrate'}"));
    g_assert_cmpstr(qdict_get_str(info, "status"), ==, "active");
    qobject_unref(info);
    g_assert(!g_file_test(vm->state_path, G_FILE_TEST_EXISTS));
    check_moving(vm, before);
    qobject_unref(vm_ok(vm, "{'execute': 'migrate_cancel'}"));
    vm_kill(vm);
}

/* A running block job (here a throttled mirror) refuses cprsave. */
static void test_during_job(void)
{
    g_autofree char *machine = memfd_machine();
    CprVm *vm = vm_start(machine, -1);
    g_autofree char *target = g_build_filename(vm->dir, "mirror.img", NULL);
    g_autofree uint64_t *before = NULL;
    g_autofree char *err = NULL;

    vm_wait_passes(vm, 2);
    qobject_unref(vm_ok(vm, "{'execute': 'drive-mirror', 'arguments':"
                        " {'job-id': 'mirror0', 'device': 'ide0-hd0',"
                        " 'target': %s, 'format': 'raw', 'sync': 'full',"
                        " 'speed': 1}}", target));
    before = vm_counters(vm);
    err = vm_error(vm_qmp(vm, "{'execute': 'cprsave', 'arguments':"
                          " {'file': %s, 'mode': 'restart'}}",
                          vm->state_path));
    g_assert_cmpstr(err, ==, "job 'mirror0' (mirror) is running; wait for "
                    "it to end or cancel it");
    g_assert(!g_file_test(vm->state_path, G_FILE_TEST_EXISTS));
    check_moving(vm, before);
    qobject_unref(vm_ok(vm, "{'execute': 'block-job-cancel', 'arguments':"
                        " {'device': 'mirror0', 'force': true}}"));
    unlink(target);
    vm_kill(vm);
}

/* Write a copy of @src to @dst changed by @how. */
static void write_bad_copy(const char *src, const char *dst, const char *how)
{
    g_autofree char *data = NULL;
    gsize len;

    g_assert(g_file_get_contents(src, &data, &len, NULL));
    if (!strcmp(how, "truncated")) {
        len /= 2;
    } else if (!strcmp(how, "corrupt")) {
        data[len / 2] ^= 0x55;
    } else {
        memcpy(data, "NOTCPR!!", 8);
    }
    g_assert(g_file_set_contents(dst, data, len, NULL));
}

/* CRC-32 (IEEE 802.3), as the state file's envelope uses */
static uint32_t crc32_ieee(const uint8_t *p, size_t len)
{
    uint32_t crc = 0xffffffff;
    int k;

    while (len--) {
        crc ^= *p++;
        for (k = 0; k < 8; k++) {
            crc = (crc >> 1) ^ (0xedb88320 & -(crc & 1));
        }
    }
    return ~crc;
}

/*
 * Write a copy of the state file @src to @dst whose checksum is right
 * but whose RTC section has a version no QEMU knows: the load fails in
 * the middle of the device state.
 */
static void write_refused_copy(const char *src, const char *dst)
{
    static const char name[] = "\x0bmc146818rtc";
    g_autofree char *data = NULL;
    uint64_t envelope;
    char *sec;
    gsize len;

    g_assert(g_file_get_contents(src, &data, &len, NULL));
    g_assert_cmpuint(len, >=, 28);
    envelope = ldq_be_p(data + 16);
    g_assert_cmpuint(envelope, <=, len);
    sec = memmem(data, envelope, name, sizeof(name) - 1);
    g_assert(sec);
    stl_be_p(sec + sizeof(name) - 1 + 4, 0xff);    /* version after id */
    stl_be_p(data + envelope - 4,
             crc32_ieee((uint8_t *)data, envelope - 4));
    g_assert(g_file_set_contents(dst, data, len, NULL));
}

/*
 * Write a copy of the state file @src to @dst whose checksum is right but
 * whose device state starts with migration commands where a device
 * section should be: open a return path, then ping on it.  Loading them
 * as a migration would (a reply written into the file's own buffer)
 * crashed QEMU; device state is whole sections only.
 */
static void write_command_copy(const char *src, const char *dst)
{
    static const uint8_t commands[] = {
        0x08, 0x00, 0x01, 0x00, 0x00,                   /* OPEN_RETURN_PATH */
        0x08, 0x00, 0x02, 0x00, 0x04, 0, 0, 0, 1,       /* PING 1 */
    };
    g_autofree char *data = NULL;
    uint64_t envelope;
    char *qevm;
    gsize len;

    g_assert(g_file_get_contents(src, &data, &len, NULL));
    envelope = ldq_be_p(data + 16);
    g_assert_cmpuint(envelope, <=, len);
    qevm = memmem(data, envelope, "QEVM\0\0\0\3", 8);
    g_assert(qevm && qevm + 8 + sizeof(commands) < data + envelope - 4);
    memcpy(qevm + 8, commands, sizeof(commands));
    stl_be_p(data + envelope - 4,
             crc32_ieee((uint8_t *)data, envelope - 4));
    g_assert(g_file_set_contents(dst, data, len, NULL));
}

/* The process other than @not whose arguments mention @vm's QMP socket */
static pid_t find_qemu_once(CprVm *vm, pid_t not)
{
    g_autoptr(GDir) proc = g_dir_open("/proc", 0, NULL);
    const char *name;

    while ((name = g_dir_read_name(proc))) {
        g_autofree char *path = g_strdup_printf("/proc/%s/cmdline", name);
        g_autofree char *cmdline = NULL;
        gsize len, off;
        pid_t pid = atoi(name);

        if (pid <= 0 || pid == not ||
            !g_file_get_contents(path, &cmdline, &len, NULL)) {
            continue;
        }
        for (off = 0; off < len; off += strlen(cmdline + off) + 1) {
            if (strstr(cmdline + off, vm->qmp_path)) {
                return pid;
            }
        }
    }
    return -1;
}

/* Wait for the process that took the VM back (it may be in execve) */
static pid_t find_qemu(CprVm *vm, pid_t not)
{
    gint64 deadline = g_get_monotonic_time() + WAIT_SECONDS * G_USEC_PER_SEC;
    pid_t pid;

    while ((pid = find_qemu_once(vm, not)) < 0) {
        g_assert(g_get_monotonic_time() < deadline);
        g_usleep(10 * 1000);
    }
    return pid;
}

/*
 * The process we started (@vm->pid) has ended; follow the VM to the old
 * binary that took it back.  Returns the wait status of the ended one.
 */
static int vm_follow_taken_back(CprVm *vm)
{
    pid_t old = vm->pid;
    int status;

    g_assert(waitpid(old, &status, 0) == old);
    vm->pid = find_qemu(vm, old);
    g_assert_cmpint(vm->pid, >, 0);
    return status;
}

/*
 * The new binary dies before cprload (here: it kills itself at once).
 * The helper holding the old address space executes the old binary with
 * the kept RAM, sockets and state: the VM is back, under the helper's
 * PID, the pending cprsave gets an error on the kept QMP connection, and
 * cprload resumes the guest with nothing lost.
 */
static void test_new_binary_dies(void)
{
    g_autofree char *machine = memfd_machine();
    CprVm *vm = vm_start(machine, -1);
    g_autofree char *bad = g_build_filename(vm->dir, "dies", NULL);
    g_autofree uint64_t *before = NULL, *after = NULL;
    g_autofree char *err = NULL;
    pid_t old = vm->pid;
    QDict *info;
    int status;

    write_script(bad, "#!/bin/sh\nkill -KILL $$\n");
    err = vm_cprsave_binary_fails(vm, bad, false, &before);
    g_assert(strstr(err, "the new QEMU did not come up"));
    status = vm_follow_taken_back(vm);
    g_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    g_assert_cmpint(vm->pid, !=, old);

    info = qobject_to(QDict, vm_ok(vm, "{'execute': 'query-cpr'}"));
    g_assert(qdict_get_bool(info, "load-pending"));
    qobject_unref(info);
    g_assert_cmpstr(vm_status(vm), ==, "inmigrate");
    vm_cprload(vm, vm->state_path);
    g_assert_cmpstr(vm_status(vm), ==, "running");
    after = check_kept(vm, before);
    unlink(bad);
    vm_kill(vm);
}

static char *reboot_dir(void);
static int qemu_img(const char *args, const char *image);
static const char **qcow2_args(const char *img);
static void qcow2_check_remove(const char *dir, const char *img,
                               const char **args);

/* What becomes of the VM when a process of an update is killed at a step */
typedef enum {
    KILL_LOST,          /* nothing is left: no process, no RAM held */
    KILL_TAKEN_BACK,    /* the old binary has it, waiting for cprload */
    KILL_RUNS,          /* the update goes on */
} KillOutcome;

typedef struct KillCase {
    const char *step;   /* where a process stops (QEMU_CPR_STOP_AT) */
    bool replied;       /* cprsave is answered before the stop */
    bool loading;       /* cprload is sent before the stop */
    /*
     * 0: SIGKILL to the stopped process; 'h': SIGKILL to the helper, the
     * stopped process goes on; 't': SIGTERM to the stopped process
     */
    int victim;
    KillOutcome outcome;
} KillCase;

/* The process state letter of @pid ('T': stopped), or 0 if it is gone */
static char proc_state(pid_t pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/stat", pid);
    g_autofree char *stat = NULL;
    char *end;

    if (!g_file_get_contents(path, &stat, NULL, NULL)) {
        return 0;
    }
    end = strrchr(stat, ')');
    return end && end[1] == ' ' ? end[2] : 0;
}

/* The process of @vm that stopped itself at a step (pid, or -1) */
static pid_t find_stopped_once(CprVm *vm)
{
    g_autoptr(GDir) proc = g_dir_open("/proc", 0, NULL);
    const char *name;

    while ((name = g_dir_read_name(proc))) {
        g_autofree char *path = g_strdup_printf("/proc/%s/cmdline", name);
        g_autofree char *cmdline = NULL;
        pid_t pid = atoi(name);
        gsize len;

        if (pid > 0 && proc_state(pid) == 'T' &&
            g_file_get_contents(path, &cmdline, &len, NULL) &&
            memmem(cmdline, len, vm->qmp_path, strlen(vm->qmp_path))) {
            return pid;
        }
    }
    return -1;
}

static pid_t wait_stopped(CprVm *vm)
{
    gint64 deadline = g_get_monotonic_time() + WAIT_SECONDS * G_USEC_PER_SEC;
    pid_t pid;

    while ((pid = find_stopped_once(vm)) < 0) {
        g_assert(g_get_monotonic_time() < deadline);
        g_usleep(10 * 1000);
    }
    return pid;
}

/* No process is left with @vm's arguments, which hold its RAM */
static void wait_vm_gone(CprVm *vm)
{
    gint64 deadline = g_get_monotonic_time() + WAIT_SECONDS * G_USEC_PER_SEC;

    while (find_qemu_once(vm, 0) >= 0) {
        g_assert(g_get_monotonic_time() < deadline);
        g_usleep(10 * 1000);
    }
}

/* Read QMP messages until CPR_TAKEN_BACK has come */
static void vm_wait_taken_back(CprVm *vm)
{
    gint64 deadline = g_get_monotonic_time() + WAIT_SECONDS * G_USEC_PER_SEC;
    struct pollfd pfd = { .fd = vm->qmp_fd, .events = POLLIN };
    QDict *msg;

    while (!vm->taken_back) {
        g_assert(g_get_monotonic_time() < deadline);
        while ((msg = g_queue_pop_head(&vm->msgs))) {
            g_assert(qdict_haskey(msg, "event"));
            vm_note_event(vm, msg);
        }
        if (!vm->taken_back && poll(&pfd, 1, 100) == 1) {
            char buf[4096];
            ssize_t n = read(vm->qmp_fd, buf, sizeof(buf));

            g_assert(n > 0);
            json_message_parser_feed(&vm->parser, buf, n);
        }
    }
}

/* The first child of @pid (the address space helper of an update), or 0 */
static pid_t first_child(pid_t pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/task/%d/children",
                                            pid, pid);
    g_autofree char *data = NULL;

    g_assert(g_file_get_contents(path, &data, NULL, NULL));
    return atoi(data);
}

/* How many threads process @pid has left (0: it is gone) */
static int proc_threads(pid_t pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/task", pid);
    g_autoptr(GDir) d = g_dir_open(path, 0, NULL);
    int n = 0;

    while (d && g_dir_read_name(d)) {
        n++;
    }
    return n;
}

/*
 * Wait until process @pid, not a child of ours, is gone (or a zombie
 * whose threads have all ended: the first thread of a process may be a
 * zombie while the others still hold its descriptors)
 */
static void wait_gone(pid_t pid)
{
    gint64 deadline = g_get_monotonic_time() + WAIT_SECONDS * G_USEC_PER_SEC;

    while (proc_state(pid) &&
           (proc_state(pid) != 'Z' || proc_threads(pid) > 1)) {
        g_assert(g_get_monotonic_time() < deadline);
        g_usleep(10 * 1000);
    }
}

/* query-cpr's taken-back */
static bool vm_taken_back(CprVm *vm)
{
    QDict *info = qobject_to(QDict, vm_ok(vm, "{'execute': 'query-cpr'}"));
    bool back = qdict_get_bool(info, "taken-back");

    qobject_unref(info);
    return back;
}

static void run_kill_case(const char *machine, const KillCase *c)
{
    g_autofree char *dir = reboot_dir();
    g_autofree char *img = g_build_filename(dir, "disk.qcow2", NULL);
    const char **extra = qcow2_args(img);
    CprVm *vm;
    g_autofree uint64_t *before = NULL;
    g_autofree char *err = NULL;
    QDict *resp;
    pid_t stopped, helper;
    int status;

    g_test_message("killed at %s (%s)", c->step,
                   c->victim == 'h' ? "the helper" :
                   c->victim == 't' ? "SIGTERM" : "SIGKILL");
    g_setenv("QEMU_CPR_STOP_AT", c->step, true);
    vm = vm_start_args(machine, -1, extra, CONSOLE_FILE);
    g_unsetenv("QEMU_CPR_STOP_AT");
    vm_wait_passes(vm, 2);
    qobject_unref(vm_ok(vm, "{'execute': 'stop'}"));
    before = vm_counters(vm);
    resp = qdict_new();
    qdict_put_str(resp, "execute", "cprsave");
    qdict_put(resp, "arguments",
              qobject_from_jsonf_nofail("{'file': %s, 'mode': 'restart'}",
                                        vm->state_path));
    vm_send(vm, resp);
    qobject_unref(resp);
    if (c->loading) {
        resp = vm_reply_within(vm, WAIT_SECONDS);
        g_assert(qdict_haskey(resp, "return"));
        qobject_unref(resp);
        resp = qdict_new();
        qdict_put_str(resp, "execute", "cprload");
        qdict_put(resp, "arguments",
                  qobject_from_jsonf_nofail("{'file': %s}", vm->state_path));
        vm_send(vm, resp);
        qobject_unref(resp);
    }
    stopped = wait_stopped(vm);
    g_assert_cmpint(stopped, ==, vm->pid);
    helper = first_child(stopped);
    switch (c->victim) {
    case 'h':
        g_assert_cmpint(helper, >, 0);
        kill(helper, SIGKILL);
        wait_gone(helper);
        kill(stopped, SIGCONT);
        break;
    case 't':
        kill(stopped, SIGTERM);
        kill(stopped, SIGCONT);
        break;
    default:
        kill(stopped, SIGKILL);
        break;
    }

    switch (c->outcome) {
    case KILL_RUNS:
        resp = vm_reply_within(vm, WAIT_SECONDS);
        g_assert(qdict_haskey(resp, "return"));
        qobject_unref(resp);
        g_assert(!vm_taken_back(vm));
        vm_cprload(vm, vm->state_path);
        g_assert_cmpstr(vm_status(vm), ==, "paused");
        break;
    case KILL_LOST:
        g_assert(waitpid(vm->pid, &status, 0) == vm->pid);
        vm->pid = -1;
        /* A process taking the VM back would be the helper, in its PID */
        if (helper > 0) {
            wait_gone(helper);
        }
        wait_vm_gone(vm);
        break;
    case KILL_TAKEN_BACK:
        vm_follow_taken_back(vm);
        if (c->loading) {
            /* cprload went to the process killed: no reply */
        } else if (c->replied) {
            resp = vm_reply_within(vm, WAIT_SECONDS);
            g_assert(qdict_haskey(resp, "return"));
            qobject_unref(resp);
        } else {
            err = vm_error(vm_reply_within(vm, WAIT_SECONDS));
            g_assert(strstr(err, "the new QEMU did not come up"));
        }
        vm_wait_taken_back(vm);
        g_assert_cmpint(vm->taken_back, ==, vm->pid);
        g_assert_cmpstr(vm_status(vm), ==, "inmigrate");
        g_assert(vm_taken_back(vm));
        vm_cprload(vm, vm->state_path);
        g_assert(!vm_taken_back(vm));
        g_assert_cmpstr(vm_status(vm), ==, "paused");
        break;
    }
    if (c->outcome != KILL_LOST) {
        g_autofree uint64_t *after = vm_counters(vm);

        g_assert(!memcmp(before, after, COUNTER_PAGES * sizeof(uint64_t)));
        qobject_unref(vm_ok(vm, "{'execute': 'cont'}"));
        check_moving(vm, after);
    }
    /* A process that took the VM back is not our child: wait for it */
    if (vm->pid > 0) {
        kill(vm->pid, SIGKILL);
        wait_gone(vm->pid);
    }
    vm_kill(vm);
    qcow2_check_remove(dir, img, extra);
}

/*
 * A kill at each step of cprsave restart (each process stops itself at
 * its step first, QEMU_CPR_STOP_AT, so that the step is reached for
 * sure).  Before the helper exists the VM dies with the old process, as
 * any VM whose QEMU is killed; from the helper's start until the new
 * process has loaded the state, the old binary takes the VM back, says
 * so (CPR_TAKEN_BACK) and cprload resumes it with nothing lost; once
 * loaded, the VM is the new process's alone.  A helper killed changes
 * nothing to an update that goes on; SIGTERM to the new process (virsh
 * destroy) ends the VM, as it would have without an update.
 */
static void test_kill_at_steps(void)
{
    static const KillCase cases[] = {
        { "restart-saved", false, false, 0, KILL_LOST },
        { "restart-exec", false, false, 0, KILL_TAKEN_BACK },
        { "inherited", false, false, 0, KILL_TAKEN_BACK },
        { "restart-replied", true, false, 0, KILL_TAKEN_BACK },
        { "load-started", true, true, 0, KILL_TAKEN_BACK },
        { "restart-loaded", true, true, 0, KILL_LOST },
        { "inherited", false, false, 'h', KILL_RUNS },
        { "restart-replied", true, false, 't', KILL_LOST },
        { "inherited", false, false, 't', KILL_LOST },
        { "restart-exec", false, false, 't', KILL_LOST },
    };
    g_autofree char *machine = memfd_machine();
    int i;

    for (i = 0; i < ARRAY_SIZE(cases); i++) {
        run_kill_case(machine, &cases[i]);
    }
}

/*
 * The new binary runs but refuses the state (here: cprload of a corrupt
 * file); quitting it before cprload hands the VM back to the old binary,
 * on the same QMP connection, without a second reply to cprsave.
 */
static void test_back_out(void)
{
    g_autofree char *machine = memfd_machine();
    CprVm *vm = vm_start(machine, -1);
    g_autofree char *bad = g_build_filename(vm->dir, "bad.cpr", NULL);
    g_autofree uint64_t *before = NULL, *after = NULL;
    g_autofree char *err = NULL;
    g_autoptr(QDict) quit = qdict_new();
    g_autoptr(QDict) query_status = qdict_new();
    pid_t old = vm->pid;
    QDict *resp;

    qdict_put_str(quit, "execute", "quit");
    qdict_put_str(query_status, "execute", "query-status");
    vm_wait_passes(vm, 2);
    qobject_unref(vm_ok(vm, "{'execute': 'stop'}"));
    before = vm_counters(vm);
    vm_cprsave_restart(vm);
    write_bad_copy(vm->state_path, bad, "corrupt");
    err = vm_error(vm_qmp(vm, "{'execute': 'cprload', 'arguments':"
                          " {'file': %s}}", bad));
    g_assert(strstr(err, "is corrupt"));

    /*
     * A request sent behind quit is for the process taking the VM back:
     * the quitting one must leave it in the socket, whole.
     */
    vm_send(vm, quit);
    vm_send(vm, query_status);
    resp = vm_reply_within(vm, 30);
    g_assert(qdict_haskey(resp, "return"));
    qobject_unref(resp);
    vm_follow_taken_back(vm);
    g_assert_cmpint(vm->pid, !=, old);
    resp = vm_reply_within(vm, 30);
    g_assert_cmpstr(qdict_get_str(qdict_get_qdict(resp, "return"), "status"),
                    ==, "inmigrate");
    qobject_unref(resp);
    vm_cprload(vm, vm->state_path);
    g_assert_cmpstr(vm_status(vm), ==, "paused");
    after = vm_counters(vm);
    g_assert(!memcmp(before, after, COUNTER_PAGES * sizeof(uint64_t)));
    qobject_unref(vm_ok(vm, "{'execute': 'cont'}"));
    check_moving(vm, after);
    unlink(bad);
    vm_kill(vm);
}

/*
 * QMP input that is JSON but not an object is refused, as by stock QEMU:
 * what CPR notes of the request being dispatched must not take it for
 * one.
 */
static void test_qmp_not_object(void)
{
    static const char *const inputs[] = {
        "\"cprsave\"\n", "[{\"execute\": \"quit\"}]\n", "42\n", "null\n",
    };
    g_autofree char *machine = memfd_machine();
    CprVm *vm = vm_start(machine, -1);
    int i;

    for (i = 0; i < ARRAY_SIZE(inputs); i++) {
        g_autofree char *err = NULL;

        g_assert(write(vm->qmp_fd, inputs[i], strlen(inputs[i])) ==
                 strlen(inputs[i]));
        err = vm_error(vm_reply_within(vm, 30));
        g_assert(strstr(err, "must be a JSON object"));
    }
    g_assert_cmpstr(vm_status(vm), ==, "running");
    vm_kill(vm);
}

/*
 * A binary that cannot take the VM over is refused before the VM stops:
 * a QEMU without live update (an ELF executable without our note) would
 * boot a new guest in the VM's place; a file that is neither ELF nor a
 * script cannot run.  Scripts are executed on trust.
 */
static void test_not_cpr_binary(void)
{
    static const char *const refused[][2] = {
        { "/bin/true", "has no 'qemu-cpr' note" },
        { "@DIR@/broken", "neither a 64-bit ELF executable nor a script" },
    };
    g_autofree char *machine = memfd_machine();
    CprVm *vm = vm_start(machine, -1);
    g_autofree char *broken = g_build_filename(vm->dir, "broken", NULL);
    g_autofree uint64_t *before = NULL;
    int i;

    write_script(broken, "\x7f" "ELF broken");
    vm_wait_passes(vm, 2);
    before = vm_counters(vm);
    for (i = 0; i < ARRAY_SIZE(refused); i++) {
        g_autofree char *bin = g_str_equal(refused[i][0], "@DIR@/broken") ?
                               g_strdup(broken) : g_strdup(refused[i][0]);
        g_autofree char *err = NULL;

        err = vm_error(vm_qmp(vm, "{'execute': 'cprsave', 'arguments':"
                              " {'file': %s, 'mode': 'restart',"
                              " 'binary': %s}}", vm->state_path, bin));
        g_assert(strstr(err, refused[i][1]));
        g_free(err);
        err = vm_error(vm_qmp(vm, "{'execute': 'cprsave', 'arguments':"
                              " {'mode': 'restart', 'relay': true,"
                              " 'binary': %s}}", bin));
        g_assert(strstr(err, refused[i][1]));
        g_assert(!g_file_test(vm->state_path, G_FILE_TEST_EXISTS));
    }
    g_assert_cmpstr(vm_status(vm), ==, "running");
    g_assert_cmpint(count_children(vm->pid), ==, 0);
    check_moving(vm, before);
    vm_kill(vm);
}

/* A daemonized QEMU cannot restart itself in place: blocked. */
static void test_daemonize_blocked(void)
{
    static const char *const daemon[] = {
        "-daemonize", "-pidfile", "@DIR@/qemu.pid", NULL
    };
    g_autofree char *machine = memfd_machine();
    CprVm *vm = vm_start_args(machine, -1, daemon, CONSOLE_FILE);
    g_autofree char *pidfile = g_build_filename(vm->dir, "qemu.pid", NULL);
    g_autofree char *pid = NULL;
    g_autofree char *err = NULL;
    int status;

    /* The process we started exits once the daemon is ready. */
    g_assert(waitpid(vm->pid, &status, 0) == vm->pid);
    g_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    g_assert(g_file_get_contents(pidfile, &pid, NULL, NULL));
    vm->pid = atoi(pid);
    vm_connect(vm);

    err = vm_error(vm_qmp(vm, "{'execute': 'cprsave', 'arguments':"
                          " {'file': %s, 'mode': 'restart'}}",
                          vm->state_path));
    g_assert(strstr(err, "blocked by 'daemonize'"));
    g_assert_cmpstr(vm_status(vm), ==, "running");
    unlink(pidfile);
    vm_kill(vm);
}

static void test_exec_fails(void)
{
    g_autofree char *machine = memfd_machine();
    CprVm *vm = vm_start(machine, -1);
    g_autofree char *bad = g_build_filename(vm->dir, "not-qemu", NULL);
    g_autofree uint64_t *before = NULL, *after = NULL;
    g_autofree char *err = NULL;

    /* Executable, but its interpreter is missing: execve fails. */
    write_script(bad, "#!/nonexistent/qemu\n");

    vm_wait_passes(vm, 2);

    /* Saving fails: the state file cannot be created. */
    before = vm_counters(vm);
    err = vm_error(vm_qmp(vm, "{'execute': 'cprsave', 'arguments':"
                          " {'file': '/nonexistent/vm.cpr',"
                          " 'mode': 'restart'}}"));
    g_assert(strstr(err, "cannot create '/nonexistent/vm.cpr."));
    g_assert_cmpstr(vm_status(vm), ==, "running");
    check_moving(vm, before);
    g_free(err);
    g_free(before);

    /* execve fails */
    before = vm_counters(vm);
    err = vm_error(vm_qmp(vm, "{'execute': 'cprsave', 'arguments':"
                          " {'file': %s, 'mode': 'restart', 'binary': %s}}",
                          vm->state_path, bad));
    g_assert(strstr(err, "cannot execute"));
    g_assert_cmpstr(vm_status(vm), ==, "running");
    g_assert_cmpint(count_children(vm->pid), ==, 0);
    g_assert(!g_file_test(vm->state_path, G_FILE_TEST_EXISTS));
    after = vm_counters(vm);
    check_not_behind(before, after);
    check_moving(vm, after);

    /* The VM is intact: a real update still works afterwards. */
    g_free(before);
    before = vm_counters(vm);
    vm_cprsave_restart(vm);
    vm_cprload(vm, vm->state_path);
    g_free(after);
    after = vm_counters(vm);
    check_not_behind(before, after);
    check_moving(vm, after);
    unlink(bad);
    vm_kill(vm);
}

/* @vm's process maps a memfd named @name (guest RAM kept in a memfd) */
static bool vm_maps_memfd(CprVm *vm, const char *name)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/maps", vm->pid);
    g_autofree char *maps = NULL;
    g_autofree char *needle = g_strdup_printf("/memfd:%s ", name);

    g_assert(g_file_get_contents(path, &maps, NULL, NULL));
    return strstr(maps, needle) != NULL;
}

/*
 * A VM whose guest RAM is anonymous memory (libvirt's default backend),
 * with @smp vCPUs
 */
static CprVm *vm_start_anonymous_smp(int smp)
{
    g_autofree char *backend = g_strdup_printf("memory-backend-ram,id=mem,"
                                               "size=%dM", GUEST_RAM_MB);
    g_autofree char *cpus = g_strdup_printf("%d", smp);
    const char *const extra[] = { "-object", backend, "-smp", cpus, NULL };

    return vm_start_args("q35,memory-backend=mem", -1, extra, CONSOLE_FILE);
}

static CprVm *vm_start_anonymous(void)
{
    return vm_start_anonymous_smp(1);
}

/*
 * Guest RAM in anonymous memory (no memfd-alloc; firmware and option
 * ROMs too): cprsave moves it into memfds while the VM runs, then the
 * update goes on as with memfd RAM.  HMP, which cannot wait for the
 * move, is refused and nothing changes.
 */
static void test_anonymous_ram(void)
{
    CprVm *vm = vm_start_anonymous();
    g_autofree uint64_t *before = NULL, *after = NULL;
    g_autofree char *out = NULL;
    int i;

    vm_wait_passes(vm, 2);
    g_assert(!vm_maps_memfd(vm, "mem"));
    out = vm_hmp(vm, "cprsave %s restart", vm->state_path);
    g_assert(strstr(out, "moves into memfds while the VM runs: use QMP"));
    g_assert(!g_file_test(vm->state_path, G_FILE_TEST_EXISTS));
    g_assert_cmpstr(vm_status(vm), ==, "running");
    for (i = 0; i < 2; i++) {
        g_free(before);
        before = vm_counters(vm);
        vm_cprsave_restart(vm);
        vm_cprload(vm, vm->state_path);
        g_assert_cmpstr(vm_status(vm), ==, "running");
        g_free(after);
        after = check_kept(vm, before);
        g_assert(vm_maps_memfd(vm, "mem"));
        g_assert(vm_maps_memfd(vm, "pc.bios"));
        g_assert(vm_maps_memfd(vm, "vga.vram"));
    }
    vm_kill(vm);
}

/*
 * Anonymous RAM, and execve fails: the VM resumes in the old process,
 * its RAM now in the memfds it was moved into, and a later update works
 */
static void test_anonymous_exec_fails(void)
{
    CprVm *vm = vm_start_anonymous();
    g_autofree char *bad = g_build_filename(vm->dir, "not-qemu", NULL);
    g_autofree uint64_t *before = NULL, *after = NULL;
    g_autofree char *err = NULL;

    write_script(bad, "#!/nonexistent/qemu\n");
    err = vm_cprsave_binary_fails(vm, bad, false, &before);
    g_assert(strstr(err, "cannot execute"));
    g_assert_cmpstr(vm_status(vm), ==, "running");
    after = check_kept(vm, before);
    g_assert(vm_maps_memfd(vm, "mem"));

    g_free(before);
    before = g_steal_pointer(&after);
    vm_cprsave_restart(vm);
    vm_cprload(vm, vm->state_path);
    after = check_kept(vm, before);
    unlink(bad);
    vm_kill(vm);
}

/* /proc/sys/vm/nr_hugepages (2 MiB pages), or set it */
static long huge_pages(long set)
{
    const char *path = "/proc/sys/vm/nr_hugepages";
    g_autofree char *text = NULL;

    if (set >= 0) {
        /* Written in place: g_file_set_contents() would rename over it */
        FILE *f = fopen(path, "w");

        if (!f) {
            return -1;
        }
        fprintf(f, "%ld\n", set);
        if (fclose(f) != 0) {
            return -1;
        }
    }
    if (!g_file_get_contents(path, &text, NULL, NULL)) {
        return -1;
    }
    return atol(text);
}

/* HugePages_Free of /proc/meminfo */
static long huge_pages_free(void)
{
    g_autofree char *text = NULL;
    const char *p;

    g_assert(g_file_get_contents("/proc/meminfo", &text, NULL, NULL));
    p = strstr(text, "HugePages_Free:");
    g_assert(p);
    return atol(p + strlen("HugePages_Free:"));
}

/*
 * Guest RAM on 2 MiB huge pages (memory-backend-memfd,hugetlb=on): the
 * new binary maps the memfd the old one kept, under the backend's name,
 * instead of allocating a block of its own first, so the update needs no
 * free huge page, and the guest keeps its pages; so does a transfer.
 * The test reserves the guest's pages, no more, and gives them back.
 */
static void test_hugepages(void)
{
    g_autofree char *backend = g_strdup_printf(
        "memory-backend-memfd,id=mem,size=%dM,hugetlb=on,hugetlbsize=2M",
        GUEST_RAM_MB);
    const char *const extra[] = { "-object", backend, NULL };
    long guest = GUEST_RAM_MB / 2, before_test = huge_pages(-1), free0;
    g_autofree uint64_t *before = NULL, *after = NULL;
    CprVm *vm;

    if (before_test < 0 || huge_pages(before_test + guest) !=
                           before_test + guest) {
        huge_pages(before_test);
        g_test_skip("restart with guest RAM on huge pages not tested: "
                    "cannot reserve huge pages (writing "
                    "/proc/sys/vm/nr_hugepages needs root)");
        return;
    }
    free0 = huge_pages_free();
    vm = vm_start_args("q35,memfd-alloc=on,memory-backend=mem", -1, extra,
                       CONSOLE_FILE);
    vm_wait_passes(vm, 2);
    /* The guest wrote every page of its RAM: all on huge pages */
    g_assert_cmpint(huge_pages_free(), ==, free0 - guest);
    before = vm_counters(vm);
    vm_cprsave_restart(vm);
    vm_cprload(vm, vm->state_path);
    after = check_kept(vm, before);
    g_assert_cmpint(huge_pages_free(), ==, free0 - guest);

    /* The same for a transfer's new process, which starts up meanwhile */
    g_free(before);
    before = g_steal_pointer(&after);
    vm_transfer(vm, vm_start_incoming(vm, NULL));
    after = check_kept(vm, before);
    g_assert_cmpint(huge_pages_free(), ==, free0 - guest);
    vm_kill(vm);
    huge_pages(before_test);
}

static void test_bad_files(void)
{
    g_autofree char *machine = memfd_machine();
    CprVm *vm = vm_start(machine, -1);
    CprVm *other = vm_start("pc,memfd-alloc=on", -1);
    g_autofree char *bad = g_build_filename(vm->dir, "bad.cpr", NULL);
    g_autofree char *foreign = g_build_filename(vm->dir, "pc.cpr", NULL);
    g_autofree char *missing = g_build_filename(vm->dir, "none.cpr", NULL);
    g_autofree uint64_t *before = NULL, *after = NULL;
    static const struct {
        const char *how, *msg;
    } cases[] = {
        { "truncated", "is truncated" },
        { "corrupt", "is corrupt" },
        { "foreign", "is not a CPR state file" },
    };
    size_t i;
    char *err;

    /* A state file of the same guest on another machine type */
    vm_wait_passes(other, 1);
    vm_cprsave_restart(other);
    g_assert(rename(other->state_path, foreign) == 0);
    vm_kill(other);

    vm_wait_passes(vm, 2);
    qobject_unref(vm_ok(vm, "{'execute': 'stop'}"));
    before = vm_counters(vm);
    vm_cprsave_restart(vm);

    for (i = 0; i < ARRAY_SIZE(cases); i++) {
        write_bad_copy(vm->state_path, bad, cases[i].how);
        err = vm_error(vm_qmp(vm, "{'execute': 'cprload', 'arguments':"
                              " {'file': %s}}", bad));
        if (!strstr(err, cases[i].msg)) {
            g_error("%s file: unexpected error '%s'", cases[i].how, err);
        }
        g_free(err);
        g_assert_cmpstr(vm_status(vm), ==, "inmigrate");
    }
    err = vm_error(vm_qmp(vm, "{'execute': 'cprload', 'arguments':"
                          " {'file': %s}}", foreign));
    g_assert(strstr(err, "machine type 'pc-i440fx-"));
    g_assert(strstr(err, "this VM is 'pc-q35-"));
    g_free(err);
    err = vm_error(vm_qmp(vm, "{'execute': 'cprload', 'arguments':"
                          " {'file': %s}}", missing));
    g_assert(strstr(err, "cannot read CPR state file"));
    g_free(err);
    /*
     * A device refuses its state, or the device state holds migration
     * commands (refused, not run): the load fails after RAM was taken
     */
    for (i = 0; i < 2; i++) {
        (i ? write_command_copy : write_refused_copy)(vm->state_path, bad);
        err = vm_error(vm_qmp(vm, "{'execute': 'cprload', 'arguments':"
                              " {'file': %s}}", bad));
        g_assert(strstr(err, "cannot load device state"));
        g_free(err);
        g_assert_cmpstr(vm_status(vm), ==, "inmigrate");
    }

    /* Nothing was lost: the right file still loads. */
    after = vm_counters(vm);
    g_assert(!memcmp(before, after, COUNTER_PAGES * sizeof(uint64_t)));
    vm_cprload(vm, vm->state_path);
    g_assert_cmpstr(vm_status(vm), ==, "paused");
    qobject_unref(vm_ok(vm, "{'execute': 'cont'}"));
    check_moving(vm, after);

    /* cprload without a pending restart is refused */
    err = vm_error(vm_qmp(vm, "{'execute': 'cprload', 'arguments':"
                          " {'file': %s}}", vm->state_path));
    g_assert(strstr(err, "no CPR restart is waiting"));
    g_free(err);

    unlink(bad);
    unlink(foreign);
    vm_kill(vm);
}

/* The targets of @pid's descriptors above stderr, one per descriptor. */
static GPtrArray *fd_targets(pid_t pid)
{
    g_autofree char *dir = g_strdup_printf("/proc/%d/fd", pid);
    GPtrArray *list = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    const char *name;

    g_assert(d);
    while ((name = g_dir_read_name(d))) {
        g_autofree char *link = g_build_filename(dir, name, NULL);
        char *target;

        if (atoi(name) <= 2) {
            continue;
        }
        target = g_file_read_link(link, NULL);
        if (target) {
            g_ptr_array_add(list, target);
        }
    }
    return list;
}

static guint count_matching(GPtrArray *list, const char *pattern)
{
    guint i, n = 0;

    for (i = 0; i < list->len; i++) {
        n += !!strstr(g_ptr_array_index(list, i), pattern);
    }
    return n;
}

/* Descriptors of @pid whose target contains @what and lack FD_CLOEXEC */
static int count_inheritable(pid_t pid, const char *what)
{
    g_autofree char *dir = g_strdup_printf("/proc/%d/fd", pid);
    GDir *d = g_dir_open(dir, 0, NULL);
    const char *name;
    int n = 0;

    g_assert(d);
    while ((name = g_dir_read_name(d)) != NULL) {
        g_autofree char *link_path = g_build_filename(dir, name, NULL);
        g_autofree char *target = g_file_read_link(link_path, NULL);
        g_autofree char *info_path = g_strdup_printf("/proc/%d/fdinfo/%s",
                                                     pid, name);
        g_autofree char *info = NULL;
        const char *flags, *end;
        unsigned long bits;

        if (!target || !strstr(target, what) ||
            !g_file_get_contents(info_path, &info, NULL, NULL)) {
            continue;
        }
        flags = strstr(info, "flags:");
        g_assert(flags);
        flags += 6;
        while (*flags == ' ' || *flags == '\t') {
            flags++;
        }
        g_assert(qemu_strtoul(flags, &end, 8, &bits) == 0);
        n += !(bits & O_CLOEXEC);
    }
    g_dir_close(d);
    return n;
}

static void test_only_registered_fds(void)
{
    g_autofree char *machine = memfd_machine();
    g_autofree char *marker = g_strdup_printf("%s/cpr-test-marker-%d",
                                              g_get_tmp_dir(), getpid());
    int fd = open(marker, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
    CprVm *vm;
    g_autoptr(GPtrArray) old_fds = NULL, new_fds = NULL, run_fds = NULL;

    g_assert(fd >= 0);
    vm = vm_start(machine, fd);
    close(fd);
    vm_wait_passes(vm, 1);

    /* The stray descriptor is there before the update ... */
    old_fds = fd_targets(vm->pid);
    g_assert_cmpuint(count_matching(old_fds, marker), ==, 1);
    g_assert_cmpuint(count_matching(old_fds, "/memfd:"), >, 0);

    /* ... and gone in the new process, which only inherited guest RAM. */
    vm_cprsave_restart(vm);
    new_fds = fd_targets(vm->pid);
    g_assert_cmpuint(count_matching(new_fds, marker), ==, 0);
    g_assert_cmpuint(count_matching(new_fds, "qemu-cpr-state"), ==, 0);

    /* Each RAM block has one memfd, as before: nothing leaked. */
    vm_cprload(vm, vm->state_path);
    run_fds = fd_targets(vm->pid);
    g_assert_cmpuint(count_matching(run_fds, "/memfd:"), ==,
                     count_matching(old_fds, "/memfd:"));
    /* Kept for QEMU itself: a program QEMU runs does not inherit them. */
    g_assert_cmpint(count_inheritable(vm->pid, "/memfd:"), ==, 0);
    unlink(marker);
    vm_kill(vm);
}

static int read_ifindex(const char *ifname)
{
    g_autofree char *path = g_strdup_printf("/sys/class/net/%s/ifindex",
                                            ifname);
    g_autofree char *data = NULL;

    g_assert(g_file_get_contents(path, &data, NULL, NULL));
    return atoi(data);
}

/*
 * A tap netdev keeps its interface across the update: the kernel never
 * sees it closed (a tap QEMU created goes away with its last descriptor),
 * so it keeps its index, and the new process opens no second tap.
 */
static void test_tap(void)
{
    g_autofree char *machine = memfd_machine();
    g_autofree char *ifname = g_strdup_printf("cprtap%d", getpid());
    g_autofree char *netdev = g_strdup_printf(
        "tap,id=net0,ifname=%s,script=no,downscript=no", ifname);
    const char *const extra[] = {
        "-netdev", netdev, "-device", "virtio-net-pci,netdev=net0", NULL
    };
    CprVm *vm = vm_start_args(machine, -1, extra, CONSOLE_FILE);
    g_autoptr(GPtrArray) fds = NULL;
    int ifindex = read_ifindex(ifname);
    int i;

    vm_wait_passes(vm, 2);
    for (i = 0; i < 2; i++) {
        vm_cprsave_restart(vm);
        g_assert_cmpint(read_ifindex(ifname), ==, ifindex);
        vm_cprload(vm, vm->state_path);
        g_assert_cmpint(read_ifindex(ifname), ==, ifindex);
    }
    fds = fd_targets(vm->pid);
    g_assert_cmpuint(count_matching(fds, "/dev/net/tun"), ==, 1);
    vm_kill(vm);
}

/*
 * A monitor on a listening socket QEMU inherited as fd=N, as libvirt
 * starts QEMU: the listener and a client's negotiated connection survive
 * the update, and the client keeps working without a new greeting.
 */
static void test_inherited_monitor(void)
{
    g_autofree char *machine = memfd_machine();
    g_autofree char *path = g_strdup_printf("%s/cpr-test-mon-%d.sock",
                                            g_get_tmp_dir(), getpid());
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    g_autofree char *chardev = NULL;
    CprVm *vm, mon = { .qmp_fd = -1 };
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    pstrcpy(addr.sun_path, sizeof(addr.sun_path), path);
    unlink(path);
    g_assert(lfd >= 0);
    g_assert(bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) == 0);
    g_assert(listen(lfd, 1) == 0);
    chardev = g_strdup_printf("socket,id=charmonitor,fd=%d,server=on,"
                              "wait=off", lfd);
    vm = vm_start_args(machine, lfd, (const char *const []) {
        "-chardev", chardev, "-mon", "chardev=charmonitor,mode=control",
        NULL
    }, CONSOLE_FILE);
    close(lfd);

    mon.qmp_path = path;
    mon.pid = vm->pid;
    g_queue_init(&mon.msgs);
    vm_connect(&mon);
    g_assert_cmpstr(vm_status(&mon), ==, "running");

    vm_cprsave_restart(vm);
    /* Same connection, command mode: no greeting, commands answered */
    g_assert_cmpstr(vm_status(&mon), ==, "inmigrate");
    vm_cprload(vm, vm->state_path);
    g_assert_cmpstr(vm_status(&mon), ==, "running");

    vm_disconnect(&mon);
    /* The kept listener accepts new clients. */
    vm_connect(&mon);
    g_assert_cmpstr(vm_status(&mon), ==, "running");
    vm_disconnect(&mon);
    unlink(path);
    vm_kill(vm);
}

/* Reboot mode */

/* A directory for reboot-mode files on a disk file system (build tree) */
static char *reboot_dir(void)
{
    g_autofree char *guest = g_path_get_dirname(getenv("CPR_GUEST_IMG"));
    g_autofree char *tmpl = g_build_filename(guest, "reboot-XXXXXX", NULL);
    char *dir = g_mkdtemp(g_steal_pointer(&tmpl));

    g_assert(dir);
    return dir;
}

static void rm_dir(const char *dir)
{
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    const char *name;

    while (d && (name = g_dir_read_name(d))) {
        g_autofree char *path = g_build_filename(dir, name, NULL);

        unlink(path);
    }
    rmdir(dir);
}

static void vm_cprsave_reboot(CprVm *vm, const char *file)
{
    struct stat st;

    qobject_unref(vm_ok(vm, "{'execute': 'cprsave', 'arguments':"
                        " {'file': %s, 'mode': 'reboot'}}", file));
    g_assert_cmpstr(vm_status(vm), ==, "paused");
    g_assert(stat(file, &st) == 0);
    g_assert_cmpint(st.st_mode & 0777, ==, 0600);
}

/* quit, as an operator does before the host reboots */
static void vm_quit(CprVm *vm)
{
    qobject_unref(vm_qmp(vm, "{'execute': 'quit'}"));
    g_assert_cmpint(waitpid(vm->pid, NULL, 0), ==, vm->pid);
    vm->pid = -1;
    vm_kill(vm);
}

/* A fresh QEMU with the same arguments plus -incoming defer */
static CprVm *vm_start_defer(const char *machine, const char *const *extra)
{
    g_autoptr(GPtrArray) args = g_ptr_array_new();
    int i;

    for (i = 0; extra && extra[i]; i++) {
        g_ptr_array_add(args, (char *)extra[i]);
    }
    g_ptr_array_add(args, (char *)"-incoming");
    g_ptr_array_add(args, (char *)"defer");
    g_ptr_array_add(args, NULL);
    return vm_start_args(machine, -1, (const char *const *)args->pdata,
                         CONSOLE_FILE);
}

static void drop_caches(void)
{
    /* Nothing of the file may come from the page cache (as if rebooted) */
    sync();
    g_file_set_contents("/proc/sys/vm/drop_caches", "3", 1, NULL);
}

/* Bytes the file takes on disk */
static uint64_t allocated(const char *file)
{
    struct stat st;

    g_assert(stat(file, &st) == 0);
    return (uint64_t)st.st_blocks * 512;
}

/*
 * Plain anonymous RAM: saved, QEMU quits, a fresh one loads the file and
 * the guest goes on where it stopped.  Once running, once paused.
 */
static void test_reboot_round_trip(void)
{
    g_autofree char *dir = reboot_dir();
    g_autofree char *file = g_build_filename(dir, "vm.cpr", NULL);
    g_autofree uint64_t *before = NULL, *after = NULL;
    CprVm *vm = vm_start("q35", -1);
    QDict *info;
    QListEntry *e;
    bool listed = false;
    int i;

    info = qobject_to(QDict, vm_ok(vm, "{'execute': 'query-cpr'}"));
    QLIST_FOREACH_ENTRY(qdict_get_qlist(info, "modes"), e) {
        listed |= !strcmp(qstring_get_str(qobject_to(QString,
                                           qlist_entry_obj(e))), "reboot");
    }
    g_assert(listed);
    qobject_unref(info);

    for (i = 0; i < 2; i++) {
        bool paused = i == 1;

        vm_wait_passes(vm, 2);
        if (paused) {
            qobject_unref(vm_ok(vm, "{'execute': 'stop'}"));
        }
        vm_cprsave_reboot(vm, file);
        g_free(before);
        before = vm_counters(vm);
        check_consistent(before);
        vm_quit(vm);
        drop_caches();

        vm = vm_start_defer("q35", NULL);
        g_assert_cmpstr(vm_status(vm), ==, "inmigrate");
        vm_cprload(vm, file);
        g_assert_cmpstr(vm_status(vm), ==, paused ? "paused" : "running");
        g_free(after);
        after = vm_counters(vm);
        if (paused) {
            g_assert(!memcmp(before, after,
                             COUNTER_PAGES * sizeof(uint64_t)));
        } else {
            check_not_behind(before, after);
            check_consistent(after);
        }
        if (paused) {
            qobject_unref(vm_ok(vm, "{'execute': 'cont'}"));
        }
        check_moving(vm, after);
    }
    vm_kill(vm);
    rm_dir(dir);
}

/* The operator changes their mind: cont resumes the VM in this process */
static void test_reboot_cont(void)
{
    g_autofree char *dir = reboot_dir();
    g_autofree char *file = g_build_filename(dir, "vm.cpr", NULL);
    g_autofree uint64_t *before = NULL;
    CprVm *vm = vm_start("q35,memfd-alloc=on", -1);

    vm_wait_passes(vm, 2);
    vm_cprsave_reboot(vm, file);
    before = vm_counters(vm);
    g_usleep(100 * 1000);
    g_assert_cmpstr(vm_status(vm), ==, "paused");
    qobject_unref(vm_ok(vm, "{'execute': 'cont'}"));
    check_moving(vm, before);
    /* memfd RAM (tmpfs) is not a file that survives a reboot: copied */
    g_assert_cmpuint(allocated(file), >, 24 * MiB);
    vm_kill(vm);
    rm_dir(dir);
}

/*
 * RAM in a shared memory-backend-file on a disk file system is not
 * copied: the file keeps only the envelope and the small RAM blocks.
 */
/*
 * Reboot mode with guest RAM in @args' backend, in @dir: @in_file, its
 * pages stay in a file of its own (only device state in the state
 * file), else they are copied into the state file
 */
static void reboot_backend_round_trip(const char *dir,
                                      const char *const *args, bool in_file)
{
    g_autofree char *file = g_build_filename(dir, "vm.cpr", NULL);
    g_autofree uint64_t *before = NULL, *after = NULL;
    CprVm *vm = vm_start_args("q35", -1, args, CONSOLE_FILE);

    vm_wait_passes(vm, 2);
    vm_cprsave_reboot(vm, file);
    before = vm_counters(vm);
    check_consistent(before);
    if (in_file) {
        g_assert_cmpuint(allocated(file), <, 8 * MiB);
    } else {
        g_assert_cmpuint(allocated(file), >, 16 * MiB);
    }
    vm_quit(vm);
    drop_caches();

    vm = vm_start_defer("q35", args);
    vm_cprload(vm, file);
    after = vm_counters(vm);
    check_not_behind(before, after);
    check_consistent(after);
    check_moving(vm, after);
    vm_kill(vm);
}

/*
 * Private memory over a memfd (share=off): the guest's pages are the
 * mapping's own and go into the state file
 */
static void test_reboot_private_memfd(void)
{
    g_autofree char *dir = reboot_dir();
    g_autofree char *obj = g_strdup_printf("memory-backend-memfd,id=mem,"
                                           "size=%dM,share=off",
                                           GUEST_RAM_MB);
    const char *const args[] = { "-object", obj, "-machine",
                                 "memory-backend=mem", NULL };

    reboot_backend_round_trip(dir, args, false);
    rm_dir(dir);
}

static void test_reboot_file_backend(void)
{
    g_autofree char *dir = reboot_dir();
    g_autofree char *mem = g_build_filename(dir, "ram", NULL);
    g_autofree char *obj = g_strdup_printf("memory-backend-file,id=mem,"
                                           "size=%dM,mem-path=%s,share=on",
                                           GUEST_RAM_MB, mem);
    const char *const args[] = { "-object", obj, "-machine",
                                 "memory-backend=mem", NULL };

    reboot_backend_round_trip(dir, args, true);
    rm_dir(dir);
}

/*
 * Guest RAM in a file on hugetlbfs (memory-backend-file, share=on): the
 * new binary of an update maps the same file, so the update needs no
 * free huge page and the guest keeps its pages.  Through reboot mode the
 * pages go into the state file (hugetlbfs does not outlive the host's
 * kernel) and come back into the new file of a fresh QEMU.  A mem-path
 * naming a directory is a file without a name: restart is blocked while
 * the pool could not give the new binary the pages again.
 */
static void test_hugetlbfs_file(void)
{
    long guest = GUEST_RAM_MB / 2, before_test = huge_pages(-1), free0;
    g_autofree char *dir = reboot_dir();
    g_autofree char *mnt = g_build_filename(dir, "huge", NULL);
    g_autofree char *ram = g_build_filename(mnt, "ram", NULL);
    g_autofree char *file = g_build_filename(dir, "vm.cpr", NULL);
    g_autofree char *obj = g_strdup_printf(
        "memory-backend-file,id=mem,size=%dM,mem-path=%s,share=on",
        GUEST_RAM_MB, ram);
    const char *args[] = {
        "-object", obj, "-machine", "memory-backend=mem", NULL
    };
    g_autofree uint64_t *before = NULL, *after = NULL;
    g_autofree char *err = NULL;
    CprVm *vm;

    /* The guest's pages, and no more */
    g_assert_cmpint(huge_pages(before_test + guest), ==, before_test + guest);
    g_assert(mkdir(mnt, 0700) == 0);
    g_assert(mount("none", mnt, "hugetlbfs", 0, "pagesize=2M") == 0);
    free0 = huge_pages_free();
    vm = vm_start_args("q35,memfd-alloc=on", -1, args, CONSOLE_FILE);
    vm_wait_passes(vm, 2);
    /* The guest wrote every page of its RAM: all on huge pages */
    g_assert_cmpint(huge_pages_free(), ==, free0 - guest);
    before = vm_counters(vm);
    vm_cprsave_restart(vm);
    vm_cprload(vm, vm->state_path);
    after = check_kept(vm, before);
    g_assert_cmpint(huge_pages_free(), ==, free0 - guest);

    vm_cprsave_reboot(vm, file);
    g_free(before);
    before = vm_counters(vm);
    check_consistent(before);
    g_assert_cmpuint(allocated(file), >, 16 * MiB);
    vm_quit(vm);
    /* What a reboot does to hugetlbfs */
    g_assert(unlink(ram) == 0);
    g_assert_cmpint(huge_pages_free(), ==, free0);
    drop_caches();
    vm = vm_start_defer("q35,memfd-alloc=on", args);
    vm_cprload(vm, file);
    g_free(after);
    after = vm_counters(vm);
    check_not_behind(before, after);
    check_consistent(after);
    check_moving(vm, after);
    g_assert_cmpint(huge_pages_free(), ==, free0 - guest);
    vm_kill(vm);

    /*
     * A mem-path naming a directory: QEMU creates a file there and
     * deletes its name, so the new binary would map a file of its own
     * first and need the guest's pages again: blocked, the VM runs on
     */
    g_assert(unlink(ram) == 0);
    g_free(obj);
    obj = g_strdup_printf("memory-backend-file,id=mem,size=%dM,mem-path=%s,"
                          "share=on", GUEST_RAM_MB, mnt);
    args[1] = obj;
    vm = vm_start_args("q35,memfd-alloc=on", -1, args, CONSOLE_FILE);
    vm_wait_passes(vm, 2);
    err = vm_error(vm_qmp(vm, "{'execute': 'cprsave', 'arguments':"
                          " {'file': %s, 'mode': 'restart'}}",
                          vm->state_path));
    g_assert(strstr(err, "blocked by 'hugepages': the new binary needs 64 "
                    "free huge pages of 2048 KiB"));
    g_assert_cmpstr(vm_status(vm), ==, "running");
    vm_kill(vm);
    g_assert(umount(mnt) == 0);
    g_assert(rmdir(mnt) == 0);
    rm_dir(dir);
    huge_pages(before_test);
}

/*
 * Guest RAM on huge pages in a memfd (hugetlb=on) through reboot mode:
 * into the state file and back into the huge pages of a fresh QEMU
 */
static void test_reboot_hugepages(void)
{
    long guest = GUEST_RAM_MB / 2, before_test = huge_pages(-1);
    g_autofree char *dir = reboot_dir();
    g_autofree char *obj = g_strdup_printf(
        "memory-backend-memfd,id=mem,size=%dM,hugetlb=on,hugetlbsize=2M",
        GUEST_RAM_MB);
    const char *const args[] = {
        "-object", obj, "-machine", "memory-backend=mem", NULL
    };

    g_assert_cmpint(huge_pages(before_test + guest), ==, before_test + guest);
    reboot_backend_round_trip(dir, args, false);
    rm_dir(dir);
    huge_pages(before_test);
}

/*
 * Bad files are refused with their reason and leave the fresh QEMU
 * ready for the right one, whatever stage the load failed at.
 */
static void test_reboot_bad_files(void)
{
    g_autofree char *dir = reboot_dir();
    g_autofree char *file = g_build_filename(dir, "vm.cpr", NULL);
    g_autofree char *bad = g_build_filename(dir, "bad.cpr", NULL);
    g_autofree char *pc = g_build_filename(dir, "pc.cpr", NULL);
    g_autofree char *big = g_build_filename(dir, "big.cpr", NULL);
    g_autofree char *restart = NULL;
    g_autofree uint64_t *before = NULL, *after = NULL;
    const char *const big_args[] = { "-m", "256", NULL };
    CprVm *vm;
    char *err;
    int fd;

    /* Files of another machine type, another RAM size, restart mode */
    vm = vm_start("pc", -1);
    vm_cprsave_reboot(vm, pc);
    vm_kill(vm);
    vm = vm_start_args("q35", -1, big_args, CONSOLE_FILE);
    vm_cprsave_reboot(vm, big);
    vm_kill(vm);
    vm = vm_start("q35,memfd-alloc=on", -1);
    restart = g_build_filename(dir, "restart.cpr", NULL);
    vm_cprsave_restart(vm);
    g_assert(rename(vm->state_path, restart) == 0);
    vm_kill(vm);

    vm = vm_start("q35", -1);
    vm_wait_passes(vm, 2);
    vm_cprsave_reboot(vm, file);
    before = vm_counters(vm);
    /* cprload in a process that was not started to load is refused */
    err = vm_error(vm_qmp(vm, "{'execute': 'cprload', 'arguments':"
                          " {'file': %s}}", file));
    g_assert(strstr(err, "not started with -incoming defer"));
    g_free(err);
    vm_quit(vm);

    vm = vm_start_defer("q35", NULL);
#define REFUSED(path, msg) do {                                              \
        err = vm_error(vm_qmp(vm, "{'execute': 'cprload', 'arguments':"     \
                              " {'file': %s}}", path));                       \
        if (!strstr(err, msg)) {                                              \
            g_error("%s: unexpected error '%s'", path, err);                  \
        }                                                                     \
        g_free(err);                                                          \
        g_assert_cmpstr(vm_status(vm), ==, "inmigrate");                      \
    } while (0)

    REFUSED(pc, "machine type 'pc-i440fx-");
    REFUSED(big, "RAM block 'pc.ram' has size 0x10000000 in the state file "
            "but 0x8000000 here");
    REFUSED(restart, "was saved in mode 'restart', which only the process");
    write_bad_copy(file, bad, "foreign");
    REFUSED(bad, "is not a CPR state file");
    /* A device refuses its state: RAM was loaded, then the load failed */
    write_refused_copy(file, bad);
    REFUSED(bad, "cannot load device state");
    {
        g_autofree char *data = NULL;
        gsize len;

        g_assert(g_file_get_contents(file, &data, &len, NULL));
        data[ldq_be_p(data + 16) / 2] ^= 0x55;
        g_assert(g_file_set_contents(bad, data, len, NULL));
        REFUSED(bad, "is corrupt: checksum mismatch");
        data[ldq_be_p(data + 16) / 2] ^= 0x55;
        /* truncated in its RAM, then inside its envelope */
        g_assert(g_file_set_contents(bad, data, len - 4096, NULL));
        REFUSED(bad, "is truncated");
        g_assert(g_file_set_contents(bad, data, ldq_be_p(data + 16) / 2,
                                     NULL));
        REFUSED(bad, "is truncated");
    }
    /* An empty file */
    fd = open(bad, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    g_assert(fd >= 0);
    close(fd);
    REFUSED(bad, "is not a CPR state file");
#undef REFUSED

    vm_cprload(vm, file);
    g_assert_cmpstr(vm_status(vm), ==, "running");
    after = vm_counters(vm);
    check_not_behind(before, after);
    check_consistent(after);
    check_moving(vm, after);
    vm_kill(vm);
    rm_dir(dir);
}

/* A full disk: no file under the name, the VM paused, cont goes on */
static void test_reboot_disk_full(void)
{
    g_autofree char *dir = reboot_dir();
    g_autofree char *file = g_build_filename(dir, "vm.cpr", NULL);
    g_autofree uint64_t *before = NULL;
    g_autofree char *err = NULL;
    CprVm *vm = vm_start("q35", -1);
    g_autoptr(GDir) d = NULL;

    if (mount("cpr-test", dir, "tmpfs", 0, "size=8m,mode=0700") < 0) {
        g_error("cannot mount a small tmpfs on %s: %s", dir,
                strerror(errno));
    }
    vm_wait_passes(vm, 2);
    err = vm_error(vm_qmp(vm, "{'execute': 'cprsave', 'arguments':"
                          " {'file': %s, 'mode': 'reboot'}}", file));
    g_assert(strstr(err, "No space left on device"));
    g_assert_cmpstr(vm_status(vm), ==, "paused");
    d = g_dir_open(dir, 0, NULL);
    g_assert(d && !g_dir_read_name(d));     /* nothing left behind */
    g_clear_pointer(&d, g_dir_close);
    before = vm_counters(vm);
    qobject_unref(vm_ok(vm, "{'execute': 'cont'}"));
    check_moving(vm, before);
    if (umount(dir) < 0) {
        g_error("cannot unmount %s: %s", dir, strerror(errno));
    }
    vm_kill(vm);
    rm_dir(dir);
}

/* Blockers name the mode: a snapshot blocks reboot (and restart) */
static void test_reboot_blocked(void)
{
    g_autofree char *dir = reboot_dir();
    g_autofree char *file = g_build_filename(dir, "vm.cpr", NULL);
    g_autofree char *err = NULL, *out = NULL;
    g_autofree uint64_t *before = NULL;
    CprVm *vm = vm_start("q35", -1);
    QDict *info;
    QListEntry *e;
    bool reboot = false;

    vm_wait_passes(vm, 1);
    qobject_unref(vm_ok(vm, "{'execute': 'cpr-snapshot'}"));
    info = qobject_to(QDict, vm_ok(vm, "{'execute': 'query-cpr'}"));
    QLIST_FOREACH_ENTRY(qdict_get_qlist(info, "blockers"), e) {
        QDict *b = qobject_to(QDict, qlist_entry_obj(e));

        /* anonymous RAM blocks restart only */
        if (!strcmp(qdict_get_str(b, "mode"), "reboot")) {
            g_assert_cmpstr(qdict_get_str(b, "object"), !=, "pc.ram");
            reboot = true;
        }
    }
    g_assert(reboot);
    qobject_unref(info);
    out = vm_hmp(vm, "info cpr");
    g_assert(strstr(out, "modes: restart reboot"));
    g_assert(strstr(out, "blocker (reboot): migration: "));

    before = vm_counters(vm);
    err = vm_error(vm_qmp(vm, "{'execute': 'cprsave', 'arguments':"
                          " {'file': %s, 'mode': 'reboot'}}", file));
    g_assert(strstr(err, "cprsave is blocked by 'migration'"));
    g_assert(!g_file_test(file, G_FILE_TEST_EXISTS));
    g_assert_cmpstr(vm_status(vm), ==, "running");
    check_moving(vm, before);
    g_free(err);
    err = vm_error(vm_qmp(vm, "{'execute': 'cprsave', 'arguments':"
                          " {'file': %s, 'mode': 'reboot', 'binary': %s}}",
                          file, getenv("QTEST_QEMU_BINARY")));
    g_assert_cmpstr(err, ==, "'binary' is only for mode 'restart'");

    qobject_unref(vm_ok(vm, "{'execute': 'cpr-snapshot-drop'}"));
    vm_cprsave_reboot(vm, file);
    vm_kill(vm);
    rm_dir(dir);
}

typedef struct CprTestCase {
    const char *accel;
    void (*fn)(void);
} CprTestCase;

/* Transfer mode */

static char *vm_channel_path(CprVm *vm)
{
    return g_build_filename(vm->dir, "cpr.sock", NULL);
}

static char *vm_new_err_path(CprVm *vm)
{
    return g_build_filename(vm->dir, "new.err", NULL);
}

static void vm_transfer_cleanup(CprVm *vm)
{
    g_autofree char *sock = vm_channel_path(vm);
    g_autofree char *err = vm_new_err_path(vm);

    unlink(sock);
    unlink(err);
}

/*
 * Start the new QEMU of a transfer: @vm's command line, then @extra, then
 * -incoming cpr:unix:DIR/cpr.sock; its standard error goes to
 * DIR/new.err.  Returns its pid once it listens.
 */
static pid_t vm_start_incoming(CprVm *vm, const char *const *extra)
{
    g_autofree char *sock = vm_channel_path(vm);
    g_autofree char *errpath = vm_new_err_path(vm);
    g_autofree char *incoming = g_strdup_printf("cpr:unix:%s", sock);
    g_autoptr(GPtrArray) argv = g_ptr_array_new_with_free_func(g_free);
    gint64 deadline = g_get_monotonic_time() + WAIT_SECONDS * G_USEC_PER_SEC;
    pid_t pid;
    guint i;

    unlink(sock);
    for (i = 0; i < vm->argv->len; i++) {
        g_ptr_array_add(argv, g_strdup(g_ptr_array_index(vm->argv, i)));
    }
    add_args(argv, vm->dir, extra);
    g_ptr_array_add(argv, g_strdup("-incoming"));
    g_ptr_array_add(argv, g_strdup(incoming));
    g_ptr_array_add(argv, NULL);

    pid = fork();
    g_assert(pid >= 0);
    if (pid == 0) {
        int fd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);

        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(fd, STDERR_FILENO);
        execv(argv->pdata[0], (char **)argv->pdata);
        _exit(127);
    }
    /* The socket appears under its name once it listens */
    while (!g_file_test(sock, G_FILE_TEST_EXISTS)) {
        g_assert(waitpid(pid, NULL, WNOHANG) == 0);
        g_assert(g_get_monotonic_time() < deadline);
        g_usleep(1000);
    }
    return pid;
}

static int wait_exit(pid_t pid)
{
    int status;

    g_assert(waitpid(pid, &status, 0) == pid);
    g_assert(WIFEXITED(status));
    return WEXITSTATUS(status);
}

/* cprsave transfer: the new process @new_pid answers */
static void vm_transfer(CprVm *vm, pid_t new_pid)
{
    g_autofree char *sock = vm_channel_path(vm);
    g_autofree char *channel = g_strdup_printf("unix:%s", sock);
    QDict *resp = vm_qmp(vm, "{'execute': 'cprsave', 'arguments':"
                         " {'mode': 'transfer', 'channel': %s},"
                         " 'id': 'save'}", channel);
    QDict *info;

    check_save_reply(resp, false);
    /* The old process left by itself, with no error */
    g_assert_cmpint(wait_exit(vm->pid), ==, 0);
    vm->pid = new_pid;
    g_assert(vm_alive(vm));
    info = qobject_to(QDict, vm_ok(vm, "{'execute': 'query-cpr'}"));
    g_assert(!qdict_get_bool(info, "load-pending"));
    qobject_unref(info);
}

/* qemu-img: CPR_QEMU_IMG, or the one next to the QEMU under test */
static char *qemu_img_path(void)
{
    g_autofree char *dir = g_path_get_dirname(getenv("QTEST_QEMU_BINARY"));
    char *path = getenv("CPR_QEMU_IMG") ? g_strdup(getenv("CPR_QEMU_IMG")) :
                 g_build_filename(dir, "qemu-img", NULL);

    g_assert(g_file_test(path, G_FILE_TEST_IS_EXECUTABLE));
    return path;
}

/* Run qemu-img with @args (and @image last, if not NULL); its status */
static int qemu_img(const char *args, const char *image)
{
    g_autofree char *img = qemu_img_path();
    g_autofree char *cmd = g_strdup_printf("%s %s %s", img, args,
                                           image ?: "");
    g_autofree char *out = NULL, *err = NULL;
    int status;

    g_assert(g_spawn_command_line_sync(cmd, &out, &err, &status, NULL));
    if (status) {
        g_test_message("%s: %s%s", cmd, out, err);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* -drive and -device arguments for the qcow2 image @img */
static const char **qcow2_args(const char *img)
{
    const char **args = g_new0(const char *, 5);

    g_autofree char *create = g_strdup_printf("create -q -f qcow2 %s 16M",
                                              img);

    g_assert_cmpint(qemu_img(create, NULL), ==, 0);
    args[0] = "-drive";
    args[1] = g_strdup_printf("file=%s,format=qcow2,if=none,id=q0", img);
    args[2] = "-device";
    args[3] = "virtio-blk-pci,drive=q0";
    return args;
}

static void qcow2_args_free(const char **args)
{
    g_free((char *)args[1]);
    g_free(args);
}

/* The image @img in @dir, which nothing has open now, is clean: remove */
static void qcow2_check_remove(const char *dir, const char *img,
                               const char **args)
{
    g_assert_cmpint(qemu_img("check -q", img), ==, 0);
    qcow2_args_free(args);
    unlink(img);
    rmdir(dir);
}

/* Send @vm the request @fmt (JSON with % interpolation), answered later */
static void G_GNUC_PRINTF(2, 3) vm_sendf(CprVm *vm, const char *fmt, ...)
{
    QObject *cmd;
    va_list ap;

    va_start(ap, fmt);
    cmd = qobject_from_vjsonf_nofail(fmt, ap);
    va_end(ap);
    vm_send(vm, qobject_to(QDict, cmd));
    qobject_unref(cmd);
}

typedef struct TransferKill {
    const char *step;
    bool in_new;        /* the new process stops at @step, else the old */
    /* KILL_RUNS: the new process runs the VM; KILL_TAKEN_BACK: the old */
    KillOutcome outcome;
} TransferKill;

static void run_transfer_kill(const char *machine, const TransferKill *c)
{
    g_autofree char *dir = reboot_dir();
    g_autofree char *img = g_build_filename(dir, "disk.qcow2", NULL);
    const char **extra = qcow2_args(img);
    g_autofree uint64_t *before = NULL;
    g_autofree char *channel = NULL, *sock = NULL;
    g_autofree char *err = NULL;
    pid_t old, new_pid, stopped;
    CprVm *vm;
    QDict *resp;
    int status;

    g_test_message("transfer: the %s process killed at %s",
                   c->in_new ? "new" : "old", c->step);
    if (!c->in_new) {
        g_setenv("QEMU_CPR_STOP_AT", c->step, true);
    }
    vm = vm_start_args(machine, -1, extra, CONSOLE_FILE);
    g_unsetenv("QEMU_CPR_STOP_AT");
    vm_wait_passes(vm, 2);
    qobject_unref(vm_ok(vm, "{'execute': 'stop'}"));
    before = vm_counters(vm);
    if (c->in_new) {
        g_setenv("QEMU_CPR_STOP_AT", c->step, true);
    }
    new_pid = vm_start_incoming(vm, NULL);
    g_unsetenv("QEMU_CPR_STOP_AT");
    sock = vm_channel_path(vm);
    channel = g_strdup_printf("unix:%s", sock);
    vm_sendf(vm, "{'execute': 'cprsave', 'arguments': {'mode': 'transfer',"
             " 'channel': %s}}", channel);
    old = vm->pid;
    stopped = wait_stopped(vm);
    g_assert_cmpint(stopped, ==, c->in_new ? new_pid : old);
    kill(stopped, SIGKILL);

    switch (c->outcome) {
    case KILL_TAKEN_BACK:
        /* Never left the old process, which says why and goes on */
        g_assert(waitpid(new_pid, &status, 0) == new_pid);
        err = vm_error(vm_reply_within(vm, WAIT_SECONDS));
        g_assert(strstr(err, "the new QEMU"));
        break;
    case KILL_RUNS:
        /* Handed over: the new process answers cprsave and has the VM */
        g_assert(waitpid(old, &status, 0) == old);
        vm->pid = new_pid;
        resp = vm_reply_within(vm, WAIT_SECONDS);
        g_assert(qdict_haskey(resp, "return"));
        qobject_unref(resp);
        break;
    case KILL_LOST:
        g_assert(waitpid(old, &status, 0) == old);
        g_assert(waitpid(new_pid, &status, 0) == new_pid);
        vm->pid = -1;
        wait_vm_gone(vm);
        break;
    }
    if (c->outcome != KILL_LOST) {
        g_autofree uint64_t *after = vm_counters(vm);

        g_assert_cmpstr(vm_status(vm), ==, "paused");
        g_assert(!memcmp(before, after, COUNTER_PAGES * sizeof(uint64_t)));
        qobject_unref(vm_ok(vm, "{'execute': 'cont'}"));
        check_moving(vm, after);
    }
    vm_kill(vm);
    /* Both processes had the image open; one was killed */
    qcow2_check_remove(dir, img, extra);
}

/*
 * A kill at each step of cprsave transfer, in the old or the new
 * process: until the old process has sent the devices' state, the VM
 * never left it (the new process dies, the old one says why and goes
 * on; the old one dies, the VM is gone and the new one exits); after, it
 * is the new process's (killed after its commit: gone; the old one
 * killed after sending: the new one runs it).  The qcow2 image the two
 * processes share is clean each time.
 */
static void test_transfer_kill_at_steps(void)
{
    static const TransferKill cases[] = {
        { "transfer-sent", false, KILL_LOST },
        { "inherited", true, KILL_TAKEN_BACK },
        { "transfer-ready", true, KILL_TAKEN_BACK },
        { "load-started", true, KILL_TAKEN_BACK },
        { "transfer-devices-sent", false, KILL_RUNS },
        { "transfer-committed", true, KILL_LOST },
    };
    g_autofree char *machine = memfd_machine();
    int i;

    for (i = 0; i < ARRAY_SIZE(cases); i++) {
        run_transfer_kill(machine, &cases[i]);
    }
}

/*
 * Remove the temporary files a save into @file left ("FILE.XXXXXX"), as
 * docs/cpr.rst tells an operator to; how many there were
 */
static int remove_temp_files(const char *file)
{
    g_autofree char *dir = g_path_get_dirname(file);
    g_autofree char *base = g_path_get_basename(file);
    g_autofree char *prefix = g_strdup_printf("%s.", base);
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    const char *name;
    int n = 0;

    while ((name = g_dir_read_name(d))) {
        if (g_str_has_prefix(name, prefix) &&
            strlen(name) == strlen(prefix) + 6) {
            g_autofree char *path = g_build_filename(dir, name, NULL);

            g_assert(!unlink(path));
            n++;
        }
    }
    return n;
}

/*
 * A fresh QEMU (with @extra) that loads @file, paused there; stopped at
 * @step if not NULL
 */
static CprVm *vm_load_fresh(const char *machine, const char **extra,
                            const char *file, const char *step)
{
    CprVm *vm;

    if (step) {
        g_setenv("QEMU_CPR_STOP_AT", step, true);
    }
    vm = vm_start_defer(machine, extra);
    g_unsetenv("QEMU_CPR_STOP_AT");
    if (!step) {
        vm_cprload(vm, file);
        g_assert_cmpstr(vm_status(vm), ==, "paused");
    }
    return vm;
}

/* Kill @vm, stopped at a step, with @sig; wait until it is gone */
static void vm_kill_stopped(CprVm *vm, int sig)
{
    g_assert_cmpint(wait_stopped(vm), ==, vm->pid);
    kill(vm->pid, sig);
    kill(vm->pid, SIGCONT);
    g_assert(waitpid(vm->pid, NULL, 0) == vm->pid);
    vm->pid = -1;
    wait_vm_gone(vm);
    vm_kill(vm);
}

/*
 * Reboot mode and checkpoints, killed while they write or load a file:
 * the file written before stays whole and loads (the new one is left as
 * FILE.XXXXXX after SIGKILL, removed by a QEMU that exits on SIGTERM),
 * a load killed midway is done again by another fresh QEMU, and the qcow2
 * image is clean each time.
 */
static void test_reboot_kill_at_steps(void)
{
    g_autofree char *machine = memfd_machine();
    g_autofree char *dir = reboot_dir();
    g_autofree char *file = g_build_filename(dir, "vm.cpr", NULL);
    g_autofree char *img = g_build_filename(dir, "disk.qcow2", NULL);
    g_autofree char *ckpt = NULL;
    const char **extra = qcow2_args(img);
    g_autofree uint64_t *saved = NULL, *after = NULL;
    g_autoptr(GDir) d = NULL;
    const char *name;
    CprVm *vm;
    int sig;

    /* The file written before: the VM as it was at its save */
    vm = vm_start_args(machine, -1, extra, CONSOLE_FILE);
    vm_wait_passes(vm, 2);
    qobject_unref(vm_ok(vm, "{'execute': 'stop'}"));
    saved = vm_counters(vm);
    vm_cprsave_reboot(vm, file);
    vm_quit(vm);

    /* A save killed before its file is whole (file-written: not renamed) */
    g_test_message("reboot: killed at file-written");
    g_setenv("QEMU_CPR_STOP_AT", "file-written", true);
    vm = vm_start_defer(machine, extra);
    g_unsetenv("QEMU_CPR_STOP_AT");
    vm_cprload(vm, file);
    qobject_unref(vm_ok(vm, "{'execute': 'cont'}"));
    vm_wait_passes(vm, 1);
    vm_sendf(vm, "{'execute': 'cprsave', 'arguments': {'mode': 'reboot',"
             " 'file': %s}}", file);
    vm_kill_stopped(vm, SIGKILL);
    g_assert_cmpint(remove_temp_files(file), ==, 1);
    g_assert_cmpint(qemu_img("check -q", img), ==, 0);

    /* A load killed midway; the next fresh QEMU loads the same file */
    g_test_message("reboot: killed at load-started");
    vm = vm_load_fresh(machine, extra, file, "load-started");
    vm_sendf(vm, "{'execute': 'cprload', 'arguments': {'file': %s}}", file);
    vm_kill_stopped(vm, SIGKILL);
    vm = vm_load_fresh(machine, extra, file, NULL);
    after = vm_counters(vm);
    g_assert(!memcmp(saved, after, COUNTER_PAGES * sizeof(uint64_t)));
    vm_kill(vm);
    g_assert_cmpint(qemu_img("check -q", img), ==, 0);

    /* A checkpoint being written: SIGKILL leaves FILE.XXXXXX, SIGTERM not */
    ckpt = g_build_filename(dir, "vm.ckpt", NULL);
    for (sig = SIGKILL; sig; sig = sig == SIGKILL ? SIGTERM : 0) {
        g_test_message("checkpoint: %s at checkpoint-paused",
                       sig == SIGKILL ? "SIGKILL" : "SIGTERM");
        g_setenv("QEMU_CPR_STOP_AT", "checkpoint-paused", true);
        vm = vm_start_defer(machine, extra);
        g_unsetenv("QEMU_CPR_STOP_AT");
        vm_cprload(vm, file);
        qobject_unref(vm_ok(vm, "{'execute': 'cont'}"));
        vm_sendf(vm, "{'execute': 'cpr-checkpoint', 'arguments':"
                 " {'file': %s}}", ckpt);
        vm_kill_stopped(vm, sig);
        g_assert_cmpint(remove_temp_files(ckpt), ==, sig == SIGKILL);
        g_assert(!g_file_test(ckpt, G_FILE_TEST_EXISTS));
        g_assert_cmpint(qemu_img("check -q", img), ==, 0);
    }

    /* The file written before is whole still */
    vm = vm_load_fresh(machine, extra, file, NULL);
    g_free(after);
    after = vm_counters(vm);
    g_assert(!memcmp(saved, after, COUNTER_PAGES * sizeof(uint64_t)));
    qobject_unref(vm_ok(vm, "{'execute': 'cont'}"));
    check_moving(vm, after);
    vm_kill(vm);

    d = g_dir_open(dir, 0, NULL);
    while ((name = g_dir_read_name(d))) {
        g_autofree char *path = g_build_filename(dir, name, NULL);

        unlink(path);
    }
    rmdir(dir);
    qcow2_args_free(extra);
}

/* cprsave transfer fails with an error starting with @prefix */
static void vm_transfer_fails(CprVm *vm, const char *prefix)
{
    g_autofree char *sock = vm_channel_path(vm);
    g_autofree char *channel = g_strdup_printf("unix:%s", sock);
    g_autofree char *err = vm_error(vm_qmp(vm,
        "{'execute': 'cprsave', 'arguments': {'mode': 'transfer',"
        " 'channel': %s}}", channel));

    if (!g_str_has_prefix(err, prefix)) {
        g_error("cprsave transfer: '%s', expected '%s...'", err, prefix);
    }
}

/* Descriptors of @pid */
static int count_fds(pid_t pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/fd", pid);
    GDir *dir = g_dir_open(path, 0, NULL);
    int n = 0;

    g_assert(dir);
    while (g_dir_read_name(dir)) {
        n++;
    }
    g_dir_close(dir);
    return n;
}

/*
 * Transfers to new processes: the QMP connection, the console log and
 * guest RAM go on as they were, and -S keeps the VM paused.  Over HMP,
 * which cannot let the VM run while it waits, transfer is refused.
 */
/* Whether QOM object @path has a child @name */
static bool vm_has_child(CprVm *vm, const char *path, const char *name)
{
    QList *props = qobject_to(QList, vm_ok(vm, "{'execute': 'qom-list',"
                                           " 'arguments': {'path': %s}}",
                                           path));
    QListEntry *e;
    bool found = false;

    QLIST_FOREACH_ENTRY(props, e) {
        QDict *p = qobject_to(QDict, qlist_entry_obj(e));

        found |= !strcmp(qdict_get_str(p, "name"), name) &&
                 g_str_has_prefix(qdict_get_str(p, "type"), "child<");
    }
    qobject_unref(props);
    return found;
}

/* Whether the answer to command @cmd names "@name" */
static bool vm_answer_names(CprVm *vm, const char *cmd, const char *name)
{
    QObject *ret = vm_ok(vm, "{'execute': %s}", cmd);
    g_autoptr(GString) s = qobject_to_json(ret);
    g_autofree char *quoted = g_strdup_printf("\"%s\"", name);

    qobject_unref(ret);
    return strstr(s->str, quoted);
}

/* What the hot-plug test expects in the VM after step @step */
static void check_hotplugged(CprVm *vm, int step)
{
    QObject *ret;

    g_assert(vm_has_child(vm, "/machine/peripheral", "rp1"));
    g_assert(!vm_has_child(vm, "/machine/peripheral", "con0"));
    g_assert(vm_has_child(vm, "/machine/peripheral", "xhci"));
    g_assert(!vm_has_child(vm, "/machine/peripheral", "kbd1"));
    g_assert(vm_has_child(vm, "/machine/peripheral", "nic1"));
    g_assert(vm_has_child(vm, "/machine/peripheral", "stor1") == (step < 2));
    g_assert(vm_has_child(vm, "/objects", "sec0"));
    g_assert(!vm_has_child(vm, "/objects", "sec1"));
    ret = vm_ok(vm, "{'execute': 'qom-get', 'arguments':"
                " {'path': '/machine/peripheral/nic1', 'property': 'netdev'}}");
    g_assert_cmpstr(qstring_get_str(qobject_to(QString, ret)), ==, "hn1");
    qobject_unref(ret);
    g_assert(vm_answer_names(vm, "query-chardev", "ch1"));
    g_assert(vm_answer_names(vm, "query-named-block-nodes", "nb1") ==
             (step < 2));
}

/*
 * What was plugged and unplugged over QMP since start-up is recreated by
 * the process taking the VM over, through restart and then transfer: the
 * command line's virtio console removed; a NIC on a root port (user
 * netdev), a USB controller on another and a USB disk on it (null block
 * node), a chardev and a secret added; a keyboard and a secret added and
 * removed again leave no trace; and after the restart, the USB disk and
 * its node removed.  A device added without an id blocks cprsave until
 * it is removed.
 */
static void test_hotplug(void)
{
    /*
     * Nothing the firmware drives (SeaBIOS runs a USB controller of the
     * command line, which writes events over the guest's counters)
     */
    static const char *const extra[] = {
        "-device", "pcie-root-port,id=rp1,chassis=1",
        "-device", "pcie-root-port,id=rp2,chassis=2",
        "-device", "virtio-serial-pci,id=vser",
        "-chardev", "null,id=cn0",
        "-device", "virtconsole,id=con0,chardev=cn0,bus=vser.0", NULL
    };
    g_autofree char *machine = memfd_machine();
    CprVm *vm = vm_start_args(machine, -1, extra, CONSOLE_FILE);
    g_autofree uint64_t *before = NULL;
    g_autofree char *err = NULL;
    QDict *info, *resp;
    int i;

    vm_wait_passes(vm, 2);
    qobject_unref(vm_ok(vm, "{'execute': 'device_del',"
                        " 'arguments': {'id': 'con0'}}"));
    qobject_unref(vm_ok(vm, "{'execute': 'device_add', 'arguments':"
                        " {'driver': 'qemu-xhci', 'id': 'xhci',"
                        " 'bus': 'rp2'}}"));
    qobject_unref(vm_ok(vm, "{'execute': 'netdev_add',"
                        " 'arguments': {'type': 'user', 'id': 'hn1'}}"));
    qobject_unref(vm_ok(vm, "{'execute': 'device_add', 'arguments':"
                        " {'driver': 'virtio-net-pci', 'id': 'nic1',"
                        " 'netdev': 'hn1', 'bus': 'rp1'}}"));
    qobject_unref(vm_ok(vm, "{'execute': 'blockdev-add', 'arguments':"
                        " {'driver': 'null-co', 'node-name': 'nb1'}}"));
    qobject_unref(vm_ok(vm, "{'execute': 'device_add', 'arguments':"
                        " {'driver': 'usb-storage', 'id': 'stor1',"
                        " 'drive': 'nb1', 'bus': 'xhci.0'}}"));
    qobject_unref(vm_ok(vm, "{'execute': 'chardev-add', 'arguments':"
                        " {'id': 'ch1', 'backend': {'type': 'null',"
                        " 'data': {}}}}"));
    qobject_unref(vm_ok(vm, "{'execute': 'object-add', 'arguments':"
                        " {'qom-type': 'secret', 'id': 'sec0',"
                        " 'data': 'kept'}}"));
    qobject_unref(vm_ok(vm, "{'execute': 'device_add', 'arguments':"
                        " {'driver': 'usb-kbd', 'id': 'kbd1',"
                        " 'bus': 'xhci.0'}}"));
    qobject_unref(vm_ok(vm, "{'execute': 'device_del',"
                        " 'arguments': {'id': 'kbd1'}}"));
    qobject_unref(vm_ok(vm, "{'execute': 'object-add', 'arguments':"
                        " {'qom-type': 'secret', 'id': 'sec1',"
                        " 'data': 'gone'}}"));
    qobject_unref(vm_ok(vm, "{'execute': 'object-del',"
                        " 'arguments': {'id': 'sec1'}}"));

    /* Without an id: a blocker until it is gone */
    qobject_unref(vm_ok(vm, "{'execute': 'device_add', 'arguments':"
                        " {'driver': 'usb-mouse', 'bus': 'xhci.0'}}"));
    info = qobject_to(QDict, vm_ok(vm, "{'execute': 'query-cpr'}"));
    {
        g_autoptr(GString) s = qobject_to_json(QOBJECT(info));

        g_assert(strstr(s->str, "/machine/peripheral-anon/device[0]"));
    }
    qobject_unref(info);
    err = vm_error(vm_qmp(vm, "{'execute': 'cprsave', 'arguments':"
                          " {'file': %s, 'mode': 'restart'}}",
                          vm->state_path));
    g_assert(strstr(err, "blocked by '/machine/peripheral-anon/device[0]'"));
    qobject_unref(vm_ok(vm, "{'execute': 'device_del', 'arguments':"
                        " {'id': '/machine/peripheral-anon/device[0]'}}"));
    check_hotplugged(vm, 0);

    before = vm_counters(vm);
    vm_cprsave_restart(vm);
    vm_cprload(vm, vm->state_path);
    g_assert_cmpstr(vm_status(vm), ==, "running");
    check_kept_update(vm, &before);
    check_hotplugged(vm, 1);

    /* The journal goes on in the new process */
    qobject_unref(vm_ok(vm, "{'execute': 'device_del',"
                        " 'arguments': {'id': 'stor1'}}"));
    /* The USB disk lets go of its node once it is finalized */
    for (i = 0; (resp = vm_qmp(vm, "{'execute': 'blockdev-del', 'arguments':"
                               " {'node-name': 'nb1'}}")) &&
                qdict_haskey(resp, "error"); i++) {
        g_assert_cmpint(i, <, WAIT_SECONDS * 100);
        qobject_unref(resp);
        g_usleep(10 * 1000);
    }
    qobject_unref(resp);
    vm_transfer(vm, vm_start_incoming(vm, NULL));
    g_assert_cmpstr(vm_status(vm), ==, "running");
    check_kept_update(vm, &before);
    check_hotplugged(vm, 2);
    vm_kill(vm);
}

static void test_transfer_round_trip(void)
{
    static const char *const paused[] = { "-S", NULL };
    g_autofree char *machine = memfd_machine();
    CprVm *vm = vm_start(machine, -1);
    g_autofree uint64_t *before = NULL;
    g_autofree char *log = NULL;
    g_autofree char *sock = vm_channel_path(vm);
    g_autofree char *hmp_out = NULL;
    gsize log_len;
    pid_t new_pid;
    int i;

    vm_wait_passes(vm, 20);
    for (i = 0; i < 2; i++) {
        g_free(before);
        before = vm_counters(vm);
        g_assert(g_file_get_contents(vm->serial_path, &log, &log_len, NULL));
        new_pid = vm_start_incoming(vm, NULL);
        vm_transfer(vm, new_pid);
        g_assert_cmpstr(vm_status(vm), ==, "running");
        check_kept_update(vm, &before);
        /* The console log went on in the same file, nothing lost */
        check_log_kept(vm, log, log_len, true);
        g_clear_pointer(&log, g_free);
    }

    /* HMP: refused, nothing changes */
    new_pid = vm_start_incoming(vm, NULL);
    hmp_out = vm_hmp(vm, "cprsave unix:%s transfer", sock);
    g_assert(strstr(hmp_out, "mode 'transfer' is available over QMP only"));
    g_assert_cmpstr(vm_status(vm), ==, "running");
    vm_transfer(vm, new_pid);

    /* -S: a running VM stays paused in the new process until cont */
    new_pid = vm_start_incoming(vm, paused);
    vm_transfer(vm, new_pid);
    g_assert_cmpstr(vm_status(vm), ==, "paused");
    qobject_unref(vm_ok(vm, "{'execute': 'cont'}"));
    g_assert_cmpstr(vm_status(vm), ==, "running");
    g_free(before);
    before = vm_counters(vm);
    check_moving(vm, before);

    /* A paused VM stays paused without -S */
    qobject_unref(vm_ok(vm, "{'execute': 'stop'}"));
    new_pid = vm_start_incoming(vm, NULL);
    vm_transfer(vm, new_pid);
    g_assert_cmpstr(vm_status(vm), ==, "paused");
    qobject_unref(vm_ok(vm, "{'execute': 'cont'}"));
    check_moving(vm, before);
    vm_kill(vm);
}

/* Anonymous guest RAM: cprsave moves it into memfds, then hands it over */
static void test_transfer_anonymous(void)
{
    CprVm *vm = vm_start_anonymous();
    g_autofree uint64_t *before = NULL;
    pid_t new_pid;
    int i;

    vm_wait_passes(vm, 2);
    for (i = 0; i < 2; i++) {
        g_free(before);
        before = vm_counters(vm);
        new_pid = vm_start_incoming(vm, NULL);
        vm_transfer(vm, new_pid);
        g_assert_cmpstr(vm_status(vm), ==, "running");
        check_kept_update(vm, &before);
        g_assert(vm_maps_memfd(vm, "mem"));
    }
    vm_kill(vm);
}

/* The number of vCPUs @vm's QEMU has */
static int vm_cpu_count(CprVm *vm)
{
    QList *cpus = qobject_to(QList, vm_ok(vm, "{'execute':"
                                          " 'query-cpus-fast'}"));
    int n = qlist_size(cpus);

    qobject_unref(cpus);
    return n;
}

/*
 * Four vCPUs (the guest runs on the first; the others wait for their
 * start-up IPI, which is state too), anonymous RAM: restart, then
 * transfer, with all four vCPUs there after each
 */
static void test_smp(void)
{
    CprVm *vm = vm_start_anonymous_smp(4);
    g_autofree uint64_t *before = NULL, *after = NULL;

    vm_wait_passes(vm, 2);
    g_assert_cmpint(vm_cpu_count(vm), ==, 4);
    before = vm_counters(vm);
    vm_cprsave_restart(vm);
    vm_cprload(vm, vm->state_path);
    after = check_kept(vm, before);
    g_assert_cmpint(vm_cpu_count(vm), ==, 4);

    g_free(before);
    before = g_steal_pointer(&after);
    vm_transfer(vm, vm_start_incoming(vm, NULL));
    g_assert_cmpstr(vm_status(vm), ==, "running");
    after = check_kept(vm, before);
    g_assert_cmpint(vm_cpu_count(vm), ==, 4);
    vm_kill(vm);
}

/* Under libvirt's default sandbox (no exec) on both sides */
static void test_transfer_sandbox(void)
{
    static const char *const deny[] = {
        "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,"
        "resourcecontrol=deny", NULL
    };
    g_autofree char *machine = memfd_machine();
    CprVm *vm = vm_start_args(machine, -1, deny, CONSOLE_FILE);
    g_autofree uint64_t *before = NULL, *after = NULL;
    QDict *info;
    QList *blockers;
    QListEntry *e;
    bool restart_blocked = false;

    vm_wait_passes(vm, 2);
    info = qobject_to(QDict, vm_ok(vm, "{'execute': 'query-cpr'}"));
    blockers = qdict_get_qlist(info, "blockers");
    QLIST_FOREACH_ENTRY(blockers, e) {
        QDict *b = qobject_to(QDict, qlist_entry_obj(e));

        g_assert_cmpstr(qdict_get_str(b, "mode"), !=, "transfer");
        restart_blocked |= !strcmp(qdict_get_str(b, "object"), "sandbox");
    }
    g_assert(restart_blocked);
    qobject_unref(info);
    before = vm_counters(vm);
    vm_transfer(vm, vm_start_incoming(vm, NULL));
    g_assert_cmpstr(vm_status(vm), ==, "running");
    after = check_kept(vm, before);
    vm_kill(vm);
}

/* What a fake new QEMU does (its end of the protocol, cpr-channel.c) */
typedef enum {
    PEER_CLOSE,                 /* accepts and closes at once */
    PEER_CLOSE_AFTER_DEVICES,   /* says ready, reads the devices, closes */
    PEER_REFUSE,                /* says ready, reads the devices, refuses */
} PeerScript;

/* Read one message; its descriptors are closed */
static bool peer_read(int fd, uint32_t *type, GByteArray *payload)
{
    uint8_t header[16], cbuf[CMSG_SPACE(sizeof(int) * 253)];
    size_t done = 0, len;

    while (done < sizeof(header) + payload->len) {
        bool in_header = done < sizeof(header);
        struct iovec iov = {
            .iov_base = in_header ? header + done
                                  : payload->data + done - sizeof(header),
            .iov_len = in_header ? sizeof(header) - done
                                 : payload->len - (done - sizeof(header)),
        };
        struct msghdr msg = {
            .msg_iov = &iov, .msg_iovlen = 1,
            .msg_control = cbuf, .msg_controllen = sizeof(cbuf),
        };
        struct cmsghdr *c;
        ssize_t n = recvmsg(fd, &msg, 0);

        if (n <= 0) {
            return false;
        }
        for (c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
            int *fds = (int *)CMSG_DATA(c);
            size_t i;

            for (i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
                close(fds[i]);
            }
        }
        done += n;
        if (done == sizeof(header)) {
            *type = ldl_be_p(header);
            len = ldq_be_p(header + 8);
            g_byte_array_set_size(payload, len);
        }
    }
    return true;
}

static void peer_send(int fd, uint32_t type, const char *payload)
{
    size_t len = payload ? strlen(payload) : 0;
    uint8_t header[16];

    stl_be_p(header, type);
    stl_be_p(header + 4, 0);
    stq_be_p(header + 8, len);
    g_assert(write(fd, header, sizeof(header)) == sizeof(header));
    g_assert(!len || write(fd, payload, len) == len);
}

/* A fake new QEMU listening on @vm's channel, following @script */
static pid_t peer_start(CprVm *vm, PeerScript script)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    g_autofree char *sock = vm_channel_path(vm);
    int lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    pid_t pid;

    pstrcpy(addr.sun_path, sizeof(addr.sun_path), sock);
    unlink(sock);
    g_assert(!bind(lfd, (struct sockaddr *)&addr, sizeof(addr)));
    g_assert(!listen(lfd, 1));
    pid = fork();
    g_assert(pid >= 0);
    if (pid == 0) {
        g_autoptr(GByteArray) p = g_byte_array_new();
        int fd = accept(lfd, NULL, NULL);
        uint32_t type = 0, count, got = 0;

        if (fd < 0 || script == PEER_CLOSE) {
            _exit(0);
        }
        /* The state, then descriptor messages until its count */
        if (!peer_read(fd, &type, p) || type != 1) {
            _exit(1);
        }
        count = ldl_be_p(p->data);
        while (got < count) {
            g_byte_array_set_size(p, 0);
            if (!peer_read(fd, &type, p) || type != 2) {
                _exit(1);
            }
            got += MIN(count - got, 200);
        }
        peer_send(fd, 3, NULL);                 /* ready */
        g_byte_array_set_size(p, 0);
        if (!peer_read(fd, &type, p) || type != 4) {
            _exit(1);
        }
        if (script == PEER_REFUSE) {
            peer_send(fd, 6, "the fake QEMU refuses");
        }
        _exit(0);
    }
    close(lfd);
    return pid;
}

/* A transfer to a fake new QEMU following @script fails as @prefix says */
static void peer_fails(CprVm *vm, PeerScript script, const char *prefix,
                       const uint64_t *before)
{
    pid_t peer = peer_start(vm, script);

    vm_transfer_fails(vm, prefix);
    g_assert_cmpint(wait_exit(peer), ==, 0);
    g_assert_cmpstr(vm_status(vm), ==, "running");
    check_moving(vm, before);
}

/*
 * Every failure before the new QEMU commits leaves the VM running in the
 * old one, and cprsave names what happened: nobody listening, the new
 * QEMU closing before it is ready, closing after it got the device
 * state, refusing it, and a real new QEMU that cannot take the state
 * (another RAM size).  A transfer after all of these works.
 */
static void test_transfer_fails(void)
{
    static const char *const bigger[] = { "-m", "256", NULL };
    g_autofree char *machine = memfd_machine();
    CprVm *vm = vm_start(machine, -1);
    g_autofree uint64_t *before = NULL;
    g_autofree char *errpath = vm_new_err_path(vm);
    g_autofree char *new_err = NULL;
    int fds = count_fds(vm->pid);
    pid_t peer;

    vm_wait_passes(vm, 2);
    before = vm_counters(vm);

    vm_transfer_fails(vm, "no new QEMU listens on ");
    check_moving(vm, before);

    peer_fails(vm, PEER_CLOSE, "", before);
    peer_fails(vm, PEER_CLOSE_AFTER_DEVICES, "the new QEMU did not take the "
               "VM: it closed the connection", before);
    peer_fails(vm, PEER_REFUSE, "the new QEMU did not take the VM: the fake "
               "QEMU refuses", before);

    /* A real new QEMU that cannot take the state: it says why, exits */
    peer = vm_start_incoming(vm, bigger);
    vm_transfer_fails(vm, "the new QEMU did not take the VM: ");
    g_assert_cmpint(wait_exit(peer), ==, 1);
    g_assert(g_file_get_contents(errpath, &new_err, NULL, NULL));
    g_assert(strstr(new_err, "the VM stays with the old QEMU"));
    g_assert_cmpstr(vm_status(vm), ==, "running");
    check_moving(vm, before);

    /* Nothing kept from the failures, and the VM can still go */
    g_assert_cmpint(count_fds(vm->pid), ==, fds);
    vm_transfer(vm, vm_start_incoming(vm, NULL));
    check_kept(vm, before);
    vm_kill(vm);
}

/* A new QEMU whose peer is not a QEMU handing a VM over exits, saying why */
static void test_transfer_bad_peer(void)
{
    static const struct {
        const char *send;       /* hex of what the peer sends, or NULL */
        const char *says;
    } cases[] = {
        { NULL, "no VM from the old QEMU: it closed the connection" },
        { "0000000400000000 0000000000000000",
          "no VM from the old QEMU: it sent a message of type 'devices' "
          "instead of 'state'" },
        { "0000000100000000 00000000000000ff 00",
          "no VM from the old QEMU: state message cut short" },
        { "0000000100000000 0000000000000008 00000000 51454d55",
          "no VM from the old QEMU: inherited CPR state has no valid header" },
    };
    g_autofree char *machine = memfd_machine();
    CprVm *vm = vm_start(machine, -1);
    g_autofree char *errpath = vm_new_err_path(vm);
    g_autofree char *sock = vm_channel_path(vm);
    size_t i;

    for (i = 0; i < G_N_ELEMENTS(cases); i++) {
        struct sockaddr_un addr = { .sun_family = AF_UNIX };
        pid_t pid = vm_start_incoming(vm, NULL);
        g_autofree char *err = NULL;
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        const char *h = cases[i].send;

        pstrcpy(addr.sun_path, sizeof(addr.sun_path), sock);
        g_assert(!connect(fd, (struct sockaddr *)&addr, sizeof(addr)));
        while (h && *h) {
            unsigned int byte;

            if (*h == ' ') {
                h++;
                continue;
            }
            g_assert(sscanf(h, "%2x", &byte) == 1);
            g_assert(write(fd, &(uint8_t){ byte }, 1) == 1);
            h += 2;
        }
        close(fd);
        g_assert_cmpint(wait_exit(pid), ==, 1);
        g_assert(g_file_get_contents(errpath, &err, NULL, NULL));
        if (!strstr(err, cases[i].says)) {
            g_error("new QEMU said '%s', expected '%s'", err, cases[i].says);
        }
        /* The old QEMU and its listening socket are untouched */
        g_assert_cmpstr(vm_status(vm), ==, "running");
        g_assert(g_file_test(vm->qmp_path, G_FILE_TEST_EXISTS));
    }
    vm_kill(vm);
}

/* A copy of QEMU's descriptor of /dev/net/tun (pidfd_getfd) */
static int vm_tap_fd(CprVm *vm)
{
    g_autofree char *dir = g_strdup_printf("/proc/%d/fd", vm->pid);
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    const char *name;
    int pidfd, fd = -1;

    g_assert(d);
    while (fd < 0 && (name = g_dir_read_name(d))) {
        g_autofree char *link = g_build_filename(dir, name, NULL);
        g_autofree char *target = g_file_read_link(link, NULL);

        if (target && !strcmp(target, "/dev/net/tun")) {
            pidfd = syscall(SYS_pidfd_open, vm->pid, 0);
            g_assert(pidfd >= 0);
            fd = syscall(SYS_pidfd_getfd, pidfd, atoi(name), 0);
            g_assert(fd >= 0);
            close(pidfd);
        }
    }
    g_assert(fd >= 0);
    return fd;
}

static int tap_vnet_hdr_len(int fd)
{
    int len;

    g_assert(!ioctl(fd, TUNGETVNETHDRSZ, &len));
    return len;
}

/*
 * A tap goes over to the new process.  Its vnet header length is a
 * setting of the tap device that the old process's NIC relies on (12
 * here, set behind QEMU's back): a new process that starts up and then
 * refuses the state leaves it alone; one that takes the VM sets what its
 * NIC asks for (10: no virtio driver in the guest), once it has the VM.
 */
static void test_transfer_tap(void)
{
    static const char *const bigger[] = { "-m", "256", NULL };
    g_autofree char *machine = memfd_machine();
    g_autofree char *ifname = g_strdup_printf("cprtap%d", getpid());
    g_autofree char *netdev = g_strdup_printf(
        "tap,id=net0,ifname=%s,script=no,downscript=no,vnet_hdr=on", ifname);
    const char *const extra[] = {
        "-netdev", netdev, "-device", "virtio-net-pci,netdev=net0", NULL
    };
    CprVm *vm = vm_start_args(machine, -1, extra, CONSOLE_FILE);
    g_autoptr(GPtrArray) fds = NULL;
    int ifindex = read_ifindex(ifname);
    int tap = vm_tap_fd(vm);
    int len = 12;
    pid_t peer;

    vm_wait_passes(vm, 2);
    g_assert_cmpint(tap_vnet_hdr_len(tap), ==, 10);
    g_assert(!ioctl(tap, TUNSETVNETHDRSZ, &len));

    peer = vm_start_incoming(vm, bigger);
    vm_transfer_fails(vm, "the new QEMU did not take the VM: ");
    g_assert_cmpint(wait_exit(peer), ==, 1);
    g_assert_cmpint(tap_vnet_hdr_len(tap), ==, 12);

    vm_transfer(vm, vm_start_incoming(vm, NULL));
    g_assert_cmpint(tap_vnet_hdr_len(tap), ==, 10);
    g_assert_cmpint(read_ifindex(ifname), ==, ifindex);
    fds = fd_targets(vm->pid);
    g_assert_cmpuint(count_matching(fds, "/dev/net/tun"), ==, 1);
    close(tap);
    vm_kill(vm);
}

/*
 * A request a client sends right behind cprsave transfer, in the same
 * write, is answered once, by the new process, after cprsave: whether
 * the old process had read it (it carries it over) or not.  With the
 * OOB capability QEMU reads requests ahead of the one it dispatches
 * (without it, it stops reading after each).
 */
static void test_transfer_pipelined(void)
{
    g_autofree char *machine = memfd_machine();
    CprVm *vm = vm_start(machine, -1);
    g_autofree char *sock = vm_channel_path(vm);
    g_autofree char *text = g_strdup_printf(
        "{\"execute\": \"cprsave\", \"id\": \"save\", \"arguments\":"
        " {\"mode\": \"transfer\", \"channel\": \"unix:%s\"}}\n"
        "{\"execute\": \"query-status\", \"id\": \"next\"}\n", sock);
    struct timeval tv = { .tv_sec = WAIT_SECONDS };
    QDict *save = NULL, *next = NULL;
    pid_t new_pid;

    vm_wait_passes(vm, 2);
    vm_disconnect(vm);
    vm_connect_caps(vm, true);
    new_pid = vm_start_incoming(vm, NULL);
    g_assert(!setsockopt(vm->qmp_fd, SOL_SOCKET, SO_RCVTIMEO, &tv,
                         sizeof(tv)));
    g_assert(write(vm->qmp_fd, text, strlen(text)) == strlen(text));
    while (!save || !next) {
        QDict *resp = vm_receive(vm);
        const char *id;

        g_assert(resp);         /* a reply was lost */
        id = qdict_get_try_str(resp, "id");
        if (!g_strcmp0(id, "save")) {
            save = resp;
        } else if (!g_strcmp0(id, "next")) {
            g_assert(save);     /* in order */
            next = resp;
        } else {
            qobject_unref(resp);
        }
    }
    g_assert(qdict_haskey(next, "return"));
    g_assert(qdict_haskey(save, "return"));
    g_assert_cmpint(wait_exit(vm->pid), ==, 0);
    vm->pid = new_pid;
    qobject_unref(save);
    qobject_unref(next);
    g_assert_cmpstr(vm_status(vm), ==, "running");
    vm_kill(vm);
}

/*
 * A second QMP client in the middle of sending a request when cprsave
 * (@mode restart or transfer) runs on the first: the old process read
 * part of it, the new one reads the rest, and answers it once.  In
 * restart mode, the client also sent requests with long answers and
 * read none yet: what the old process could not send comes from the new
 * one, in order, whole.
 */
/* Requests whose answers (100 KiB each) fill the socket */
#define HALF_LONG_ANSWERS 40

static void qmp_half_request(const char *mode)
{
    static const char *const extra[] = {
        "-qmp", "unix:@DIR@/qmp2.sock,server=on,wait=off", NULL
    };
    static const char half[] = "{\"execute\": \"query-st";
    static const char rest[] = "atus\", \"id\": \"half\"}\n";
    g_autofree char *machine = memfd_machine();
    CprVm *vm = vm_start_args(machine, -1, extra, CONSOLE_FILE);
    CprVm *mon2 = g_new0(CprVm, 1);
    QDict *resp;
    pid_t new_pid;
    int i;

    mon2->qmp_path = g_build_filename(vm->dir, "qmp2.sock", NULL);
    mon2->qmp_fd = -1;
    mon2->pid = vm->pid;        /* vm_connect() checks that it lives */
    g_queue_init(&mon2->msgs);
    vm_connect(mon2);
    vm_wait_passes(vm, 1);
    if (!strcmp(mode, "restart")) {
        for (i = 0; i < HALF_LONG_ANSWERS; i++) {
            g_autofree char *req = g_strdup_printf(
                "{\"execute\": \"query-qmp-schema\", \"id\": %d}\n", i);

            g_assert(write(mon2->qmp_fd, req, strlen(req)) == strlen(req));
        }
    }
    for (i = 0; i < 2; i++) {
        /* Twice: the second update carries what the first carried */
        if (i == 0) {
            g_assert(write(mon2->qmp_fd, half, strlen(half)) ==
                     strlen(half));
        }
        g_usleep(200 * 1000);  /* read by now: QEMU reads as it comes */
        if (!strcmp(mode, "restart")) {
            vm_cprsave_restart(vm);
            vm_cprload(vm, vm->state_path);
        } else {
            new_pid = vm_start_incoming(vm, NULL);
            vm_transfer(vm, new_pid);
        }
    }
    g_assert(write(mon2->qmp_fd, rest, strlen(rest)) == strlen(rest));
    for (i = 0; !strcmp(mode, "restart") && i < HALF_LONG_ANSWERS; i++) {
        resp = vm_reply_within(mon2, WAIT_SECONDS);
        g_assert_cmpint(qdict_get_try_int(resp, "id", -1), ==, i);
        g_assert(qdict_haskey(resp, "return"));
        qobject_unref(resp);
    }
    resp = vm_reply_within(mon2, WAIT_SECONDS);
    g_assert_cmpstr(qdict_get_try_str(resp, "id"), ==, "half");
    g_assert(qdict_haskey(resp, "return"));
    qobject_unref(resp);
    /* Once: the next answer is to the next request */
    resp = vm_qmp(mon2, "{'execute': 'query-name', 'id': 'next'}");
    g_assert_cmpstr(qdict_get_try_str(resp, "id"), ==, "next");
    qobject_unref(resp);
    g_assert_cmpstr(vm_status(vm), ==, "running");
    vm_disconnect(mon2);
    unlink(mon2->qmp_path);
    g_free(mon2->qmp_path);
    g_free(mon2);
    vm_kill(vm);
}

static void test_restart_qmp_half_request(void)
{
    qmp_half_request("restart");
}

static void test_transfer_qmp_half_request(void)
{
    qmp_half_request("transfer");
}

/* -pidfile blocks transfer (the new QEMU could not lock it) */
static void test_transfer_blocked(void)
{
    static const char *const pidfile[] = {
        "-pidfile", "@DIR@/qemu.pid", NULL
    };
    static const char *const vnc[] = { "-vnc", "unix:@DIR@/vnc.sock", NULL };
    g_autofree char *machine = memfd_machine();
    CprVm *vm = vm_start_args(machine, -1, pidfile, CONSOLE_FILE);
    g_autofree char *pid_path = g_build_filename(vm->dir, "qemu.pid", NULL);
    g_autofree char *vnc_path = NULL;

    vm_transfer_fails(vm, "cprsave is blocked by 'pidfile': ");
    g_assert_cmpstr(vm_status(vm), ==, "running");
    unlink(pid_path);
    vm_kill(vm);

    /* A VNC server's listening socket would be bound after the commit */
    vm = vm_start_args(machine, -1, vnc, CONSOLE_FILE);
    vnc_path = g_build_filename(vm->dir, "vnc.sock", NULL);
    vm_transfer_fails(vm, "cprsave is blocked by 'display': ");
    g_assert_cmpstr(vm_status(vm), ==, "running");
    unlink(vnc_path);
    vm_kill(vm);
}

static long vm_rss_kb(CprVm *vm)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/status", vm->pid);
    g_autofree char *data = NULL;
    const char *p, *end;
    long kb;

    g_assert(g_file_get_contents(path, &data, NULL, NULL));
    /* Its own memory, not the guest RAM it has touched so far */
    p = strstr(data, "RssAnon:");
    g_assert(p);
    p += 8;
    while (*p == ' ' || *p == '\t') {
        p++;
    }
    g_assert(!qemu_strtol(p, &end, 10, &kb));
    return kb;
}


/*
 * cprsave restart with relay: the VM goes through a relay process and
 * back to this PID, whose new binary answers; it is then in run state
 * @status, and a running VM was resumed twice (by the relay, then here).
 */
static void vm_relay(CprVm *vm, const char *status)
{
    int resumes = vm->resumes;

    check_save_reply(vm_qmp(vm, "{'execute': 'cprsave', 'arguments':"
                            " {'mode': 'restart', 'relay': true},"
                            " 'id': 'save'}"), false);
    g_assert(vm_alive(vm));
    g_assert_cmpstr(vm_status(vm), ==, status);
    if (!strcmp(status, "running")) {
        g_assert_cmpint(vm->resumes, ==, resumes + 2);
    }
}

/*
 * Relayed restarts keep the PID, the QMP connection, the console log,
 * guest RAM and the pid file, leave no process or descriptor behind,
 * pass on no stray descriptor, and ignore -S as restart does.
 */
static void test_relay(void)
{
    static const char *const extra[] = {
        "-pidfile", "@DIR@/qemu.pid", "-S", NULL
    };
    g_autofree char *machine = memfd_machine();
    g_autofree char *marker = g_strdup_printf("%s/cpr-test-marker-%d",
                                              g_get_tmp_dir(), getpid());
    int stray = open(marker, O_CREAT | O_RDWR, 0600);
    CprVm *vm = vm_start_args(machine, stray, extra, CONSOLE_FILE);
    g_autofree char *pidfile = g_build_filename(vm->dir, "qemu.pid", NULL);
    g_autofree uint64_t *before = NULL;
    pid_t pid = vm->pid;
    int i, fds = -1;
    long rss = 0;

    close(stray);
    qobject_unref(vm_ok(vm, "{'execute': 'cont'}"));
    vm_wait_passes(vm, 20);
    for (i = 0; i < 10; i++) {
        g_autofree char *log = NULL, *pids = NULL;
        g_autoptr(GPtrArray) targets = NULL;
        gsize log_len;

        g_free(before);
        before = vm_counters(vm);
        g_assert(g_file_get_contents(vm->serial_path, &log, &log_len, NULL));
        vm_relay(vm, "running");
        g_assert_cmpint(vm->pid, ==, pid);
        g_assert_cmpint(count_children(pid), ==, 0);
        check_kept_update(vm, &before);
        check_log_kept(vm, log, log_len, true);
        g_assert(g_file_get_contents(pidfile, &pids, NULL, NULL));
        g_assert_cmpint(atoi(pids), ==, pid);
        targets = fd_targets(pid);
        g_assert_cmpuint(count_matching(targets, marker), ==, 0);
        if (i == 0) {
            fds = count_fds(pid);
            rss = vm_rss_kb(vm);
        }
    }
    g_assert_cmpint(count_fds(pid), ==, fds);
    g_assert_cmpint(vm_rss_kb(vm), <, rss + rss / 4);

    /* A paused VM stays paused */
    qobject_unref(vm_ok(vm, "{'execute': 'stop'}"));
    vm_relay(vm, "paused");
    qobject_unref(vm_ok(vm, "{'execute': 'cont'}"));
    check_moving(vm, before);
    unlink(marker);
    vm_kill(vm);
}

/* cprsave relay @binary fails with an error containing @expect */
static void vm_relay_fails(CprVm *vm, const char *binary, const char *expect)
{
    g_autofree char *err = vm_error(vm_qmp(vm,
        "{'execute': 'cprsave', 'arguments': {'mode': 'restart',"
        " 'relay': true, 'binary': %s}}", binary));

    if (!strstr(err, expect)) {
        g_error("cprsave relay: '%s', expected '%s'", err, expect);
    }
}

/*
 * Before the relay has the VM, failures leave it running here; if the
 * new binary cannot be executed after it, the running binary takes the
 * VM back and cprsave says so.
 */
static void test_relay_fails(void)
{
    g_autofree char *machine = memfd_machine();
    CprVm *vm = vm_start(machine, -1);
    g_autofree char *bad = g_build_filename(vm->dir, "not-qemu", NULL);
    g_autofree char *bigger = g_build_filename(vm->dir, "bigger", NULL);
    g_autofree char *once = g_build_filename(vm->dir, "once", NULL);
    g_autofree char *twice = g_build_filename(vm->dir, "twice", NULL);
    g_autofree char *ran = NULL, *ram = NULL;
    g_autofree char *script = NULL, *err = NULL;
    g_autofree uint64_t *before = NULL;
    const char *qemu = getenv("QTEST_QEMU_BINARY");
    int fds = count_fds(vm->pid);
    pid_t pid = vm->pid;
    CprVm *plain;

    vm_wait_passes(vm, 2);
    before = vm_counters(vm);
    err = vm_error(vm_qmp(vm, "{'execute': 'cprsave', 'arguments':"
                          " {'mode': 'restart', 'relay': true, 'file': %s}}",
                          vm->state_path));
    g_assert(strstr(err, "takes no 'file'"));
    g_free(err);
    err = vm_error(vm_qmp(vm, "{'execute': 'cprsave', 'arguments':"
                          " {'mode': 'transfer', 'relay': true}}"));
    g_assert_cmpstr(err, ==, "'relay' is only for mode 'restart'");

    /* The relay cannot start, or cannot take the state */
    write_script(bad, "#!/nonexistent/qemu\n");
    vm_relay_fails(vm, bad, "cannot execute");
    check_moving(vm, before);
    script = g_strdup_printf("#!/bin/sh\nexec %s \"$@\" -m 256\n", qemu);
    write_script(bigger, script);
    vm_relay_fails(vm, bigger, "the new QEMU did not take the VM: ");
    g_assert_cmpstr(vm_status(vm), ==, "running");
    check_moving(vm, before);
    g_assert_cmpint(count_fds(vm->pid), ==, fds);
    g_assert_cmpint(count_children(vm->pid), ==, 0);

    /*
     * A binary the relay runs and this process then cannot execute (it
     * removes itself): the running binary takes the VM back.
     */
    g_free(script);
    script = g_strdup_printf("#!/bin/sh\nrm -f \"$0\"\nexec %s \"$@\"\n",
                             qemu);
    write_script(once, script);
    vm_relay_fails(vm, once, "the VM is back in the binary that ran it");
    g_assert_cmpint(vm->pid, ==, pid);
    g_assert_cmpstr(vm_status(vm), ==, "running");
    check_kept_update(vm, &before);
    vm_relay(vm, "running");
    check_kept_update(vm, &before);

    /*
     * The new binary runs as the relay but fails in this PID: the relay
     * runs the VM on and answers cprsave on the same connection, naming
     * its own PID; the old PID is gone
     */
    g_free(script);
    script = g_strdup_printf("#!/bin/sh\n[ -e %s/ran ] && exit 3\n"
                             "touch %s/ran\nexec %s \"$@\"\n", vm->dir,
                             vm->dir, qemu);
    write_script(twice, script);
    g_free(err);
    err = vm_error(vm_qmp(vm, "{'execute': 'cprsave', 'arguments':"
                          " {'mode': 'restart', 'relay': true, 'binary': %s}}",
                          twice));
    g_assert(strstr(err, "the VM runs on in the relay, process "));
    g_assert_cmpint(wait_exit(pid), ==, 3);
    vm->pid = atoi(strrchr(err, ' ') + 1);
    g_assert_cmpint(vm->pid, >, 0);
    g_assert_cmpstr(vm_status(vm), ==, "running");
    check_kept(vm, before);
    ran = g_build_filename(vm->dir, "ran", NULL);
    unlink(ran);
    unlink(twice);
    unlink(bigger);
    unlink(bad);
    vm_kill(vm);

    /* Blocked by what blocks restart: RAM in a private file mapping */
    plain = vm_start_args("q35,memfd-alloc=on,memory-backend=mem", -1,
                          private_ram, CONSOLE_FILE);
    ram = g_build_filename(plain->dir, "guest-ram", NULL);
    vm_relay_fails(plain, qemu, "cprsave is blocked by 'mem'");
    g_assert_cmpstr(vm_status(plain), ==, "running");
    unlink(ram);
    vm_kill(plain);
}


/* A child of @parent's fork point on @channel (with -S if @paused) */
static CprVm *vm_start_fork_child(const char *channel, bool paused)
{
    g_autofree char *machine = memfd_machine();
    g_autofree char *incoming = g_strdup_printf("cpr-fork:%s", channel);
    const char *const extra[] = {
        "-incoming", incoming, paused ? "-S" : NULL, NULL
    };

    return vm_start_args(machine, -1, extra, CONSOLE_FILE);
}

/* cpr-fork-reset of @child, stopped right after: its counters */
static uint64_t *vm_fork_reset_stopped(CprVm *child)
{
    uint64_t *c;

    qobject_unref(vm_ok(child, "{'execute': 'cpr-fork-reset'}"));
    qobject_unref(vm_ok(child, "{'execute': 'stop'}"));
    c = vm_counters(child);
    check_consistent(c);
    return c;
}

/*
 * cpr-fork: children run from the fork point, the parent stays there
 * until 'cont' and then goes on apart from them; a child started after
 * the parent ran on still starts from the fork point; cpr-fork-reset
 * takes a child back to it; a fork parent cannot be updated; a child
 * forks in turn.
 */
static void test_fork(void)
{
    g_autofree char *machine = memfd_machine();
    CprVm *vm = vm_start(machine, -1);
    g_autofree char *path = g_build_filename(vm->dir, "fork.sock", NULL);
    g_autofree char *channel = g_strdup_printf("unix:%s", path);
    g_autofree char *path2 = g_build_filename(vm->dir, "fork2.sock", NULL);
    g_autofree char *channel2 = g_strdup_printf("unix:%s", path2);
    g_autofree uint64_t *point = NULL, *now = NULL, *before = NULL;
    g_autofree uint64_t *apoint = NULL;
    g_autofree char *err = NULL;
    CprVm *a, *b, *c;

    vm_wait_passes(vm, 3);
    err = vm_error(vm_qmp(vm, "{'execute': 'cpr-fork-reset'}"));
    g_assert_cmpstr(err, ==, "this VM is not a running fork child");
    qobject_unref(vm_ok(vm, "{'execute': 'cpr-fork', 'arguments':"
                        " {'channel': %s}}", channel));
    g_assert_cmpstr(vm_status(vm), ==, "paused");
    point = vm_counters(vm);
    check_consistent(point);

    /* A child runs on from the fork point; the parent does not move */
    a = vm_start_fork_child(channel, false);
    g_assert_cmpstr(vm_status(a), ==, "running");
    vm_wait_passes(a, 3);
    now = vm_counters(a);
    check_not_behind(point, now);
    g_assert_cmpuint(now[0], >, point[0]);
    check_counters_are(vm, point);

    /* The parent goes on; a later child still starts at the fork point */
    qobject_unref(vm_ok(vm, "{'execute': 'cont'}"));
    check_moving(vm, point);
    b = vm_start_fork_child(channel, true);
    g_assert_cmpstr(vm_status(b), ==, "paused");
    check_counters_are(b, point);
    qobject_unref(vm_ok(b, "{'execute': 'cont'}"));
    check_moving(b, point);

    /* Back to the fork point, several times */
    for (int i = 0; i < 3; i++) {
        vm_wait_passes(a, 2);
        g_free(before);
        before = vm_counters(a);
        qobject_unref(vm_ok(a, "{'execute': 'cpr-fork-reset'}"));
        g_free(now);
        now = vm_counters(a);
        check_not_behind(point, now);
        g_assert_cmpuint(now[0], <, before[0]);
        check_moving(a, now);
    }

    /* What the parent wrote since is not in any child, and the reverse */
    g_free(now);
    now = vm_counters(vm);
    g_assert_cmpuint(now[0], >, point[0]);
    g_free(err);
    err = vm_error(vm_qmp(vm, "{'execute': 'cprsave', 'arguments':"
                          " {'file': %s, 'mode': 'restart'}}",
                          vm->state_path));
    g_assert(strstr(err, "blocked by 'fork'"));
    g_free(err);
    err = vm_error(vm_qmp(vm, "{'execute': 'cpr-fork', 'arguments':"
                          " {'channel': %s}}", channel));
    g_assert(strstr(err, "a fork parent already"));
    vm_kill(b);

    /*
     * A child of a child: it starts where its parent, a child itself,
     * was when it forked, and neither sees what the other writes since
     */
    vm_wait_passes(a, 2);
    qobject_unref(vm_ok(a, "{'execute': 'cpr-fork', 'arguments':"
                        " {'channel': %s}}", channel2));
    g_assert_cmpstr(vm_status(a), ==, "paused");
    apoint = vm_counters(a);
    check_consistent(apoint);
    check_not_behind(point, apoint);
    g_assert_cmpuint(apoint[0], >, point[0]);
    c = vm_start_fork_child(channel2, true);
    check_counters_are(c, apoint);
    qobject_unref(vm_ok(a, "{'execute': 'cont'}"));
    check_moving(a, apoint);
    check_counters_are(c, apoint);
    qobject_unref(vm_ok(c, "{'execute': 'cont'}"));
    check_moving(c, apoint);
    vm_wait_passes(c, 2);
    g_free(before);
    before = vm_counters(c);
    g_free(now);
    now = vm_fork_reset_stopped(c);
    check_not_behind(apoint, now);
    g_assert_cmpuint(now[0], <, before[0]);
    /* The middle child goes back to its own fork point */
    g_free(now);
    now = vm_fork_reset_stopped(a);
    check_not_behind(point, now);
    g_assert_cmpuint(now[0], <, apoint[0]);
    vm_kill(c);
    vm_kill(a);
    unlink(path);
    unlink(path2);
    vm_kill(vm);
}

/*
 * The KVM memory slots a process made before its VM ran, as its trace
 * log (kvm_set_user_memory, cpr_load_done) at @log shows: each is made
 * once, none is changed or deleted
 */
static void check_slots_made_once(const char *log)
{
    g_autofree char *text = NULL;
    g_auto(GStrv) lines = NULL;
    g_autoptr(GHashTable) seen = g_hash_table_new_full(g_str_hash,
                                                       g_str_equal, g_free,
                                                       NULL);
    bool loaded = false;

    g_assert(g_file_get_contents(log, &text, NULL, NULL));
    lines = g_strsplit(text, "\n", -1);
    for (int i = 0; lines[i] && !loaded; i++) {
        const char *slot = strstr(lines[i], "kvm_set_user_memory Slot#");

        loaded = strstr(lines[i], "cpr_load_done") != NULL;
        if (slot) {
            slot += strlen("kvm_set_user_memory ");
            g_assert(!strstr(slot, " size=0x0 "));
            g_assert(g_hash_table_add(seen,
                                      g_strndup(slot, strcspn(slot, " "))));
        }
    }
    g_assert(loaded);
    /* Low RAM, the rest of RAM, the BIOS at least */
    g_assert_cmpuint(g_hash_table_size(seen), >=, 3);
}

/*
 * Under KVM, a process that takes a VM over (a fork child started after
 * the fork, the new binary of an update) gives KVM the memory map the
 * VM's state sets up, once: each change of a KVM memory slot waits for
 * an SRCU grace period in the kernel, some for milliseconds.
 */
static void test_kvm_slots_once(void)
{
    g_autofree char *machine = memfd_machine();
    const char *const trace[] = {
        "-d", "trace:kvm_set_user_memory,trace:cpr_load_done",
        "-D", "@DIR@/trace.log", NULL
    };
    CprVm *vm = vm_start_args(machine, -1, trace, CONSOLE_FILE);
    g_autofree char *path = g_build_filename(vm->dir, "fork.sock", NULL);
    g_autofree char *incoming = g_strdup_printf("cpr-fork:unix:%s", path);
    g_autofree char *log = g_build_filename(vm->dir, "trace.log", NULL);
    g_autofree char *child_log = g_build_filename(vm->dir, "child.log",
                                                  NULL);
    const char *const child_args[] = {
        "-incoming", incoming, "-d",
        "trace:kvm_set_user_memory,trace:cpr_load_done", "-D", child_log,
        NULL
    };
    g_autofree uint64_t *point = NULL;
    CprVm *child;

    /* The new binary of an update: it truncates the log at its start */
    vm_wait_passes(vm, 2);
    vm_cprsave_restart(vm);
    vm_cprload(vm, vm->state_path);
    check_slots_made_once(log);
    vm_wait_passes(vm, 2);

    /* A fork child started after the fork */
    qobject_unref(vm_ok(vm, "{'execute': 'cpr-fork', 'arguments':"
                        " {'channel': %s}}", incoming + strlen("cpr-fork:")));
    point = vm_counters(vm);
    child = vm_start_args(machine, -1, child_args, CONSOLE_FILE);
    check_slots_made_once(child_log);
    check_moving(child, point);
    vm_kill(child);
    unlink(path);
    vm_kill(vm);
}

/* cpr-fork refused: RAM not in memfds, a bad channel; nothing changes */
static void test_fork_refused(void)
{
    g_autofree char *machine = memfd_machine();
    CprVm *vm = vm_start("q35", -1);
    g_autofree uint64_t *before = NULL;
    g_autofree char *err = NULL;

    vm_wait_passes(vm, 2);
    before = vm_counters(vm);
    err = vm_error(vm_qmp(vm, "{'execute': 'cpr-fork', 'arguments':"
                          " {'channel': 'unix:/tmp/cpr-fork-refused'}}"));
    g_assert(strstr(err, "cpr-fork is blocked by 'pc.ram'"));
    g_assert_cmpstr(vm_status(vm), ==, "running");
    check_moving(vm, before);
    vm_kill(vm);

    vm = vm_start(machine, -1);
    vm_wait_passes(vm, 2);
    g_free(before);
    before = vm_counters(vm);
    g_free(err);
    err = vm_error(vm_qmp(vm, "{'execute': 'cpr-fork', 'arguments':"
                          " {'channel': 'unix:/nonexistent/fork.sock'}}"));
    g_assert(strstr(err, "cannot listen on '/nonexistent/fork.sock'"));
    g_assert_cmpstr(vm_status(vm), ==, "running");
    check_moving(vm, before);
    g_free(err);
    err = vm_error(vm_qmp(vm, "{'execute': 'cprsave', 'arguments':"
                          " {'mode': 'fork'}}"));
    g_assert_cmpstr(err, ==, "a VM forks with cpr-fork, not cprsave");
    vm_kill(vm);
}

/* A unix socket listening at @path (bound, not accepting) */
static int listen_unix(const char *path)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    pstrcpy(addr.sun_path, sizeof(addr.sun_path), path);
    g_assert(fd >= 0);
    g_assert(bind(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0);
    g_assert(listen(fd, 4) == 0);
    return fd;
}

/*
 * The fork parent killed right after it served a child (fork-served):
 * the child runs on without it, and cpr-fork-reset still takes it back
 * to the fork point, which the child's own descriptors keep.
 */
static void test_fork_parent_killed(void)
{
    g_autofree char *machine = memfd_machine();
    g_autofree uint64_t *point = NULL, *before = NULL, *now = NULL;
    g_autofree char *channel = NULL, *sock = NULL;
    CprVm *vm, *a;
    int i;

    g_setenv("QEMU_CPR_STOP_AT", "fork-served", true);
    vm = vm_start(machine, -1);
    g_unsetenv("QEMU_CPR_STOP_AT");
    sock = g_build_filename(vm->dir, "fork.sock", NULL);
    channel = g_strdup_printf("unix:%s", sock);
    vm_wait_passes(vm, 2);
    qobject_unref(vm_ok(vm, "{'execute': 'cpr-fork', 'arguments':"
                        " {'channel': %s}}", channel));
    point = vm_counters(vm);
    a = vm_start_fork_child(channel, false);
    g_assert_cmpint(wait_stopped(vm), ==, vm->pid);
    kill(vm->pid, SIGKILL);
    g_assert(waitpid(vm->pid, NULL, 0) == vm->pid);
    vm->pid = -1;

    g_assert_cmpstr(vm_status(a), ==, "running");
    for (i = 0; i < 2; i++) {
        vm_wait_passes(a, 2);
        g_free(before);
        before = vm_counters(a);
        qobject_unref(vm_ok(a, "{'execute': 'cpr-fork-reset'}"));
        g_free(now);
        now = vm_counters(a);
        check_not_behind(point, now);
        g_assert_cmpuint(now[0], <, before[0]);
        check_moving(a, now);
    }
    vm_kill(a);
    unlink(sock);
    vm_kill(vm);
}

/*
 * Children started before the fork wait for the parent with their
 * monitor answering, even on a socket file an earlier parent left behind;
 * a child that finds something else than a fork parent, or is given a
 * channel that cannot be one, exits, saying why.
 */
static void test_fork_waiting(void)
{
    g_autofree char *machine = memfd_machine();
    g_autofree char *dir = reboot_dir();
    g_autofree char *path = g_build_filename(dir, "fork.sock", NULL);
    g_autofree char *channel = g_strdup_printf("unix:%s", path);
    g_autofree char *incoming = g_strdup_printf("cpr-fork:%s", channel);
    g_autofree char *err = NULL;
    g_autofree uint64_t *point = NULL, *now = NULL;
    const char *argv[] = {
        getenv("QTEST_QEMU_BINARY"), "-machine", machine, "-accel", accel(),
        "-m", "128", "-display", "none", "-nodefaults", "-incoming",
        incoming, NULL
    };
    CprVm *vm, *child;
    int lfd, status;
    pid_t peer;

    /* A channel that is neither unix:PATH nor file:PATH: refused */
    argv[11] = "cpr-fork:unix:";
    g_assert(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_DEFAULT, NULL,
                          NULL, NULL, &err, &status, NULL));
    g_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1);
    g_assert(strstr(err, "the fork parent is unix:PATH"));
    g_clear_pointer(&err, g_free);
    argv[11] = incoming;

    /* Something else listens at the path: the child exits */
    lfd = listen_unix(path);
    peer = fork();
    g_assert(peer >= 0);
    if (peer == 0) {
        static const char junk[] = "220 not a fork parent\r\n";
        int fd = accept(lfd, NULL, NULL);

        if (fd >= 0 && write(fd, junk, sizeof(junk)) < 0) {
            _exit(1);
        }
        _exit(0);
    }
    g_assert(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_DEFAULT, NULL,
                          NULL, NULL, &err, &status, NULL));
    g_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1);
    g_assert(strstr(err, "-incoming cpr-fork:unix:"));
    g_assert(strstr(err, ": the fork parent: "));
    g_assert_cmpint(wait_exit(peer), ==, 0);

    /* The socket file stays behind, nobody listening: the child waits */
    close(lfd);
    child = vm_start_fork_child(channel, false);
    g_assert_cmpstr(vm_status(child), ==, "inmigrate");
    g_usleep(200 * 1000);
    g_assert_cmpstr(vm_status(child), ==, "inmigrate");

    /* A parent forks there: the child runs from its fork point */
    vm = vm_start(machine, -1);
    vm_wait_passes(vm, 2);
    qobject_unref(vm_ok(vm, "{'execute': 'cpr-fork', 'arguments':"
                        " {'channel': %s}}", channel));
    point = vm_counters(vm);
    check_moving(child, point);
    now = vm_counters(child);
    check_not_behind(point, now);
    vm_kill(child);
    vm_kill(vm);
    unlink(path);
    rm_dir(dir);
}

/* Checkpoints (cpr-checkpoint.c) */

/* Wait for CPR_CHECKPOINT_COMPLETED; its data (the caller's reference) */
static QDict *vm_checkpoint_wait(CprVm *vm)
{
    QDict *data;

    while (!vm->checkpoint_done) {
        QDict *msg = vm_receive(vm);

        g_assert(msg);
        g_assert(qdict_haskey(msg, "event"));
        vm_note_event(vm, msg);
    }
    data = vm->checkpoint_done;
    vm->checkpoint_done = NULL;
    return data;
}

static QDict *vm_checkpoint_info(CprVm *vm)
{
    QDict *info = qobject_to(QDict, vm_ok(vm, "{'execute': 'query-cpr'}"));
    QDict *ckpt = qdict_get_qdict(info, "checkpoint");

    g_assert(ckpt);
    qobject_ref(ckpt);
    qobject_unref(info);
    return ckpt;
}

/*
 * A checkpoint of a guest that keeps rewriting all of its RAM: the file,
 * loaded in a fresh QEMU, holds every page as it was at one instant (all
 * counters within one pass) although the guest made many passes while
 * the file was written; the original runs on throughout.
 */
static void checkpoint_round_trip(const char *machine)
{
    g_autofree char *dir = reboot_dir();
    g_autofree char *file = g_build_filename(dir, "vm.ckpt", NULL);
    g_autofree uint64_t *before = NULL, *after = NULL, *restored = NULL;
    g_autofree uint64_t *at = NULL;
    g_autofree char *channel = g_strdup_printf("file:%s", file);
    CprVm *vm = vm_start(machine, -1), *copy, *child;
    QDict *done, *info;
    size_t passes;
    struct stat st;
    int i;

    vm_wait_passes(vm, 2);
    before = vm_counters(vm);
    passes = vm_serial_len(vm);
    /* Slowly enough for the guest to rewrite its RAM many times meanwhile */
    qobject_unref(vm_ok(vm, "{'execute': 'cpr-checkpoint', 'arguments':"
                        " {'file': %s, 'max-bandwidth': %d}}",
                        file, 32 << 20));
    g_assert_cmpstr(vm_status(vm), ==, "running");
    info = vm_checkpoint_info(vm);
    g_assert_cmpstr(qdict_get_str(info, "status"), ==, "active");
    g_assert_cmpint(qdict_get_int(info, "pause-us"), >, 0);
    qobject_unref(info);
    g_assert(stat(file, &st) < 0);      /* not in place before it is whole */
    done = vm_checkpoint_wait(vm);
    g_assert_cmpstr(qdict_get_str(done, "status"), ==, "completed");
    g_assert(!qdict_haskey(done, "error"));
    g_assert_cmpint(qdict_get_int(done, "bytes"), >=, 30 * MiB);
    qobject_unref(done);
    g_assert_cmpuint(vm_serial_len(vm) - passes, >=, 2);
    g_assert_cmpstr(vm_status(vm), ==, "running");
    after = vm_counters(vm);
    check_consistent(after);
    info = vm_checkpoint_info(vm);
    g_assert_cmpstr(qdict_get_str(info, "status"), ==, "completed");
    g_assert_cmpint(qdict_get_int(info, "ram-done"), ==,
                    qdict_get_int(info, "ram-total"));
    qobject_unref(info);
    g_assert(stat(file, &st) == 0);
    g_assert_cmpint(st.st_mode & 0777, ==, 0600);

    copy = vm_start_defer(machine, NULL);
    vm_cprload(copy, file);
    qobject_unref(vm_ok(copy, "{'execute': 'stop'}"));
    restored = vm_counters(copy);
    check_consistent(restored);
    for (i = 0; i < COUNTER_PAGES; i++) {
        g_assert_cmpuint(restored[i], >=, before[i]);
    }
    qobject_unref(vm_ok(copy, "{'execute': 'cont'}"));
    check_moving(copy, restored);
    vm_kill(copy);

    /* The file as a fork parent: children map its pages copy-on-write */
    child = vm_start_fork_child(channel, true);
    g_assert_cmpstr(vm_status(child), ==, "paused");
    at = vm_counters(child);
    check_consistent(at);
    for (i = 0; i < COUNTER_PAGES; i++) {
        g_assert_cmpuint(at[i], >=, before[i]);
        g_assert_cmpuint(at[i], <=, restored[i]);
    }
    /* Behind the original, which went on from the checkpoint */
    g_assert_cmpuint(at[0], <, after[0]);
    qobject_unref(vm_ok(child, "{'execute': 'cont'}"));
    vm_wait_passes(child, 4);
    g_free(restored);
    restored = vm_counters(child);
    g_free(after);
    after = vm_fork_reset_stopped(child);
    g_assert_cmpuint(after[0], >=, at[0]);
    g_assert_cmpuint(after[0], <, restored[0]);
    vm_kill(child);
    check_moving(vm, after);
    vm_kill(vm);
    rm_dir(dir);
}

/* Whether query-cpr lists a checkpoint blocker on RAM block @object */
static char *vm_checkpoint_blocker(CprVm *vm, const char *object)
{
    QDict *info = qobject_to(QDict, vm_ok(vm, "{'execute': 'query-cpr'}"));
    QListEntry *e;
    char *reason = NULL;

    QLIST_FOREACH_ENTRY(qdict_get_qlist(info, "blockers"), e) {
        QDict *b = qobject_to(QDict, qlist_entry_obj(e));

        if (!strcmp(qdict_get_str(b, "mode"), "checkpoint") &&
            !strcmp(qdict_get_str(b, "object"), object)) {
            reason = g_strdup(qdict_get_str(b, "reason"));
        }
    }
    qobject_unref(info);
    return reason;
}

static void test_checkpoint(void)
{
    g_autofree char *machine = memfd_machine();
    g_autofree char *reason = NULL;
    CprVm *vm;

    checkpoint_round_trip(machine);
    /*
     * Anonymous RAM: untouched pages are protected too where the kernel
     * can (Linux 6.4); elsewhere query-cpr says why it cannot
     */
    vm = vm_start("q35", -1);
    reason = vm_checkpoint_blocker(vm, "pc.ram");
    vm_kill(vm);
    if (reason) {
        g_assert(strstr(reason, "Linux 6.4"));
    } else {
        checkpoint_round_trip("q35");
    }
}

/* Refusals, a cancel and a full disk: the VM runs on, no file is left */
static void test_checkpoint_refused(void)
{
    g_autofree char *machine = memfd_machine();
    g_autofree char *dir = reboot_dir();
    g_autofree char *file = g_build_filename(dir, "vm.ckpt", NULL);
    g_autofree uint64_t *before = NULL;
    g_autofree char *err = NULL;
    g_autoptr(GDir) d = NULL;
    CprVm *vm = vm_start(machine, -1);
    QDict *done;

    vm_wait_passes(vm, 2);
    err = vm_error(vm_qmp(vm, "{'execute': 'cpr-checkpoint-cancel'}"));
    g_assert_cmpstr(err, ==, "no checkpoint is being written");
    g_free(err);
    err = vm_error(vm_qmp(vm, "{'execute': 'cprsave', 'arguments':"
                          " {'mode': 'checkpoint', 'file': %s}}", file));
    g_assert(strstr(err, "with cpr-checkpoint, not cprsave"));

    /* Busy: a second checkpoint, cprsave, migration, a snapshot */
    qobject_unref(vm_ok(vm, "{'execute': 'cpr-checkpoint', 'arguments':"
                        " {'file': %s, 'max-bandwidth': %d}}",
                        file, 1 << 20));
    g_free(err);
    err = vm_error(vm_qmp(vm, "{'execute': 'cpr-checkpoint', 'arguments':"
                          " {'file': %s}}", file));
    g_assert(strstr(err, "a checkpoint is being written to"));
    g_free(err);
    err = vm_error(vm_qmp(vm, "{'execute': 'cprsave', 'arguments':"
                          " {'mode': 'reboot', 'file': '/nonexistent/x'}}"));
    g_assert(strstr(err, "a checkpoint is being written to"));
    g_free(err);
    err = vm_error(vm_qmp(vm, "{'execute': 'cpr-snapshot'}"));
    g_assert(strstr(err, "a checkpoint is being written to"));
    g_free(err);
    err = vm_error(vm_qmp(vm, "{'execute': 'migrate', 'arguments':"
                          " {'uri': 'exec:cat >/dev/null'}}"));
    g_assert(strstr(err, "a checkpoint is being written to"));
    g_assert_cmpstr(vm_status(vm), ==, "running");

    /* Cancelled: the event says so and nothing is left */
    qobject_unref(vm_ok(vm, "{'execute': 'cpr-checkpoint-cancel'}"));
    done = vm_checkpoint_wait(vm);
    g_assert_cmpstr(qdict_get_str(done, "status"), ==, "cancelled");
    qobject_unref(done);
    d = g_dir_open(dir, 0, NULL);
    g_assert(d && !g_dir_read_name(d));
    g_clear_pointer(&d, g_dir_close);
    before = vm_counters(vm);
    check_moving(vm, before);

    /* Blocked: a snapshot exists (a migration blocker) */
    qobject_unref(vm_ok(vm, "{'execute': 'cpr-snapshot'}"));
    g_free(err);
    err = vm_error(vm_qmp(vm, "{'execute': 'cpr-checkpoint', 'arguments':"
                          " {'file': %s}}", file));
    g_assert(strstr(err, "cpr-checkpoint is blocked by 'migration'"));
    qobject_unref(vm_ok(vm, "{'execute': 'cpr-snapshot-drop'}"));
    g_free(err);
    err = vm_error(vm_qmp(vm, "{'execute': 'cpr-checkpoint', 'arguments':"
                          " {'file': '/nonexistent/vm.ckpt'}}"));
    g_assert(strstr(err, "cannot create '/nonexistent/vm.ckpt."));

    /* A full disk: the checkpoint fails, the VM runs on */
    if (mount("cpr-test", dir, "tmpfs", 0, "size=8m,mode=0700") < 0) {
        g_error("cannot mount a small tmpfs on %s: %s", dir,
                strerror(errno));
    }
    qobject_unref(vm_ok(vm, "{'execute': 'cpr-checkpoint', 'arguments':"
                        " {'file': %s}}", file));
    done = vm_checkpoint_wait(vm);
    g_assert_cmpstr(qdict_get_str(done, "status"), ==, "failed");
    g_assert(strstr(qdict_get_str(done, "error"), "No space left on device"));
    qobject_unref(done);
    d = g_dir_open(dir, 0, NULL);
    g_assert(d && !g_dir_read_name(d));
    g_clear_pointer(&d, g_dir_close);
    g_assert_cmpstr(vm_status(vm), ==, "running");
    g_free(before);
    before = vm_counters(vm);
    check_moving(vm, before);
    if (umount(dir) < 0) {
        g_error("cannot unmount %s: %s", dir, strerror(errno));
    }
    vm_kill(vm);
    rm_dir(dir);
}

/*
 * A checkpoint requested on a second monitor while cprsave (transfer)
 * waits for the new process is not taken meanwhile: the monitors are
 * quiet until cprsave returns.  Here the new process fails, so the VM
 * stays and then writes the checkpoint.
 */
static void test_checkpoint_during_cprsave(void)
{
    static const char *const extra[] = {
        "-qmp", "unix:@DIR@/qmp2.sock,server=on,wait=off", NULL
    };
    g_autofree char *machine = memfd_machine();
    CprVm *vm = vm_start_args(machine, -1, extra, CONSOLE_FILE);
    CprVm *mon2 = g_new0(CprVm, 1);
    g_autofree char *peer = vm_channel_path(vm);
    g_autofree char *channel = g_strdup_printf("unix:%s", peer);
    g_autofree char *file = g_build_filename(vm->dir, "vm.ckpt", NULL);
    g_autofree uint64_t *before = NULL;
    g_autofree char *err = NULL;
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    struct pollfd pfd;
    gint64 deadline, left;
    uint8_t hdr[16];
    QDict *cmd, *resp;
    int lfd, fd;

    mon2->qmp_path = g_build_filename(vm->dir, "qmp2.sock", NULL);
    mon2->qmp_fd = -1;
    g_queue_init(&mon2->msgs);
    vm_connect(mon2);
    vm_wait_passes(vm, 1);

    /* A new process that takes the connection and never answers */
    lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    pstrcpy(addr.sun_path, sizeof(addr.sun_path), peer);
    g_assert(!bind(lfd, (struct sockaddr *)&addr, sizeof(addr)));
    g_assert(!listen(lfd, 1));
    cmd = qobject_to(QDict, qobject_from_jsonf_nofail(
        "{'execute': 'cprsave', 'arguments': {'mode': 'transfer',"
        " 'channel': %s}}", channel));
    vm_send(vm, cmd);
    qobject_unref(cmd);
    fd = accept(lfd, NULL, NULL);
    g_assert(fd >= 0);
    /* Its monitors are quiet once it sends the state (a message header) */
    g_assert_cmpint(read(fd, hdr, sizeof(hdr)), >, 0);

    cmd = qobject_to(QDict, qobject_from_jsonf_nofail(
        "{'execute': 'cpr-checkpoint', 'arguments': {'file': %s}}", file));
    vm_send(mon2, cmd);
    qobject_unref(cmd);
    /* Events may come meanwhile, but no answer */
    deadline = g_get_monotonic_time() + 500 * 1000;
    pfd = (struct pollfd) { .fd = mon2->qmp_fd, .events = POLLIN };
    while ((left = deadline - g_get_monotonic_time()) > 0 &&
           poll(&pfd, 1, left / 1000 + 1) > 0) {
        resp = vm_receive(mon2);
        g_assert(resp);
        if (!qdict_haskey(resp, "event")) {
            g_autoptr(GString) j = qobject_to_json(QOBJECT(resp));

            g_error("answered during cprsave: %s", j->str);
        }
        vm_note_event(mon2, resp);
    }
    g_assert(!g_file_test(file, G_FILE_TEST_EXISTS));

    /* The new process fails: cprsave says so, then the checkpoint runs */
    close(fd);
    close(lfd);
    err = vm_error(vm_reply(vm));
    g_assert(strstr(err, "the new QEMU did not start"));
    resp = vm_reply(mon2);
    g_assert(qdict_haskey(resp, "return"));
    qobject_unref(resp);
    resp = vm_checkpoint_wait(mon2);
    g_assert_cmpstr(qdict_get_str(resp, "status"), ==, "completed");
    qobject_unref(resp);
    g_assert(g_file_test(file, G_FILE_TEST_IS_REGULAR));
    g_assert_cmpstr(vm_status(vm), ==, "running");
    before = vm_counters(vm);
    check_moving(vm, before);

    vm_disconnect(mon2);
    g_free(mon2->qmp_path);
    g_free(mon2);
    unlink(file);
    vm_kill(vm);
}

/* 50 transfers in a row: no descriptor or memory growth */
static void test_transfer_soak(void)
{
    g_autofree char *machine = memfd_machine();
    CprVm *vm = vm_start(machine, -1);
    g_autofree uint64_t *before = NULL;
    int fds = -1, i;
    long rss = 0;

    vm_wait_passes(vm, 2);
    before = vm_counters(vm);
    for (i = 0; i < 50; i++) {
        vm_transfer(vm, vm_start_incoming(vm, NULL));
        if (i == 0) {
            fds = count_fds(vm->pid);
            rss = vm_rss_kb(vm);
        }
    }
    g_assert_cmpint(count_fds(vm->pid), ==, fds);
    g_assert_cmpint(vm_rss_kb(vm), <, rss + rss / 4);
    check_kept(vm, before);
    vm_kill(vm);
}


static void run_case(const void *opaque)
{
    const CprTestCase *tc = opaque;

    test_accel = tc->accel;
    tc->fn();
}

static void add_test(const char *name, void (*fn)(void))
{
    g_auto(GStrv) accels = g_strsplit(getenv("CPR_TEST_ACCEL") ?: "tcg",
                                      ",", -1);
    int i;

    for (i = 0; accels[i]; i++) {
        CprTestCase *tc = g_new0(CprTestCase, 1);
        g_autofree char *path = g_strdup_printf("/cpr/%s/%s", accels[i],
                                                name);

        tc->accel = g_strdup(accels[i]);
        tc->fn = fn;
        g_test_add_data_func(path, tc, run_case);
    }
}

/* A case that tests what only one accelerator @accel does, if listed */
static void add_test_accel(const char *name, void (*fn)(void),
                           const char *accel)
{
    g_auto(GStrv) accels = g_strsplit(getenv("CPR_TEST_ACCEL") ?: "tcg",
                                      ",", -1);
    CprTestCase *tc;
    g_autofree char *path = NULL;

    if (!g_strv_contains((const char *const *)accels, accel)) {
        return;
    }
    tc = g_new0(CprTestCase, 1);
    tc->accel = g_strdup(accel);
    tc->fn = fn;
    path = g_strdup_printf("/cpr/%s/%s", accel, name);
    g_test_add_data_func(path, tc, run_case);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);

    if (!getenv("QTEST_QEMU_BINARY") || !getenv("CPR_GUEST_IMG")) {
        g_printerr("cpr-test: set QTEST_QEMU_BINARY and CPR_GUEST_IMG\n");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    add_test("restart/round-trip", test_round_trip);
    add_test("restart/memory-backends", test_backends);
    add_test("restart/console-socket", test_console_socket);
    add_test("restart/console-pty", test_console_pty);
    add_test("restart/tap", test_tap);
    add_test("restart/inherited-monitor", test_inherited_monitor);
    add_test("restart/fdset", test_fdset);
    add_test("restart/paused-stays-paused", test_paused_stays_paused);
    add_test("restart/auto-load", test_auto_load);
    add_test("restart/auto-load-mux", test_auto_load_mux);
    add_test("restart/auto-load-fails", test_auto_load_fails);
    add_test("restart/blocked", test_blocked);
    add_test("restart/exec-fails", test_exec_fails);
    add_test("restart/not-cpr-binary", test_not_cpr_binary);
    add_test("restart/anonymous-ram", test_anonymous_ram);
    add_test("restart/anonymous-exec-fails", test_anonymous_exec_fails);
    add_test("restart/smp", test_smp);
    add_test("restart/hugepages", test_hugepages);
    add_test("restart/daemonize-blocked", test_daemonize_blocked);
    add_test("restart/sandbox", test_sandbox);
    add_test("restart/during-migration", test_during_migration);
    add_test("restart/during-job", test_during_job);
    add_test("restart/new-binary-dies", test_new_binary_dies);
    add_test("restart/kill-at-steps", test_kill_at_steps);
    add_test("transfer/kill-at-steps", test_transfer_kill_at_steps);
    add_test("reboot/kill-at-steps", test_reboot_kill_at_steps);
    add_test("fork/parent-killed", test_fork_parent_killed);
    add_test("restart/back-out", test_back_out);
    add_test("restart/bad-state-files", test_bad_files);
    add_test("qmp/not-an-object", test_qmp_not_object);
    add_test("restart/only-registered-fds", test_only_registered_fds);
    add_test("restart/relay", test_relay);
    add_test("restart/relay-fails", test_relay_fails);
    add_test("transfer/round-trip", test_transfer_round_trip);
    add_test("hotplug/restart-transfer", test_hotplug);
    add_test("transfer/anonymous-ram", test_transfer_anonymous);
    add_test("transfer/sandbox", test_transfer_sandbox);
    add_test("transfer/fails", test_transfer_fails);
    add_test("transfer/bad-peer", test_transfer_bad_peer);
    add_test("transfer/tap", test_transfer_tap);
    add_test("transfer/pipelined", test_transfer_pipelined);
    add_test("restart/qmp-half-request", test_restart_qmp_half_request);
    add_test("transfer/qmp-half-request", test_transfer_qmp_half_request);
    add_test("transfer/blocked", test_transfer_blocked);
    add_test("transfer/soak", test_transfer_soak);
    add_test("fork/children", test_fork);
    add_test("fork/refused", test_fork_refused);
    add_test("fork/waiting", test_fork_waiting);
    add_test_accel("fork/kvm-slots-once", test_kvm_slots_once, "kvm");
    add_test("checkpoint/round-trip", test_checkpoint);
    add_test("checkpoint/refused", test_checkpoint_refused);
    add_test("checkpoint/during-cprsave", test_checkpoint_during_cprsave);
    add_test("reboot/round-trip", test_reboot_round_trip);
    add_test("reboot/cont", test_reboot_cont);
    add_test("reboot/file-backend", test_reboot_file_backend);
    add_test("reboot/hugepages", test_reboot_hugepages);
    add_test("restart/hugetlbfs-file", test_hugetlbfs_file);
    add_test("reboot/private-memfd", test_reboot_private_memfd);
    add_test("reboot/bad-files", test_reboot_bad_files);
    add_test("reboot/disk-full", test_reboot_disk_full);
    add_test("reboot/blocked", test_reboot_blocked);
    return g_test_run();
}
