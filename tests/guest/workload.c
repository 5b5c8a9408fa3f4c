/*
 * Workload of the Linux test guest: the init program of the initramfs built
 * by scripts/linux-guest.sh.  It keeps every part of the VM busy so that a
 * live update that loses or repeats anything is seen from the host:
 *
 *  - heartbeat: "H <seq>" on /dev/ttyS0 every millisecond, and once a second
 *    a status line "S <seq> up=<ms> rtc=<RTC seconds> mem=<passes>
 *    net=<records> vda=<records> vdb=<records> vdc=<records> err=<errors>
 *    cpus=<online CPUs> net2=<records>" on ttyS0, and on ttyS1 and ttyS2
 *    where the VM has them;
 *  - a heartbeat on every CPU: "C <cpu> <seq>" on ttyS0 every 10 ms from a
 *    thread bound to that CPU;
 *  - memory: fills a region with a pattern that depends on the pass and
 *    verifies it before the next pass;
 *  - network: one TCP connection to the host peer carrying numbered 64-byte
 *    records; another to a second peer over a NIC the host hot-plugs
 *    (eth1), from when it appears;
 *  - disks: numbered 512-byte records written round-robin to each virtio
 *    disk with O_DIRECT, read back at once, and older records re-read;
 *    /dev/vdc, if the host hot-plugs a third disk, from when it appears;
 *  - power button: ACPI power button press powers the guest off, so that
 *    "virsh shutdown" works.
 *
 * Parameters come from the kernel command line: cpr.mem=<MiB>,
 * cpr.peer=<ipv4>:<port>, cpr.peer2=<ipv4>:<port> and cpr.ip2=<ipv4>/<prefix>
 * (eth1's).  Errors are printed as "E <text>" lines.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/input.h>
#include <linux/reboot.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include <linux/fs.h>
#include <linux/rtc.h>

#define SECTOR 512
#define REC_MAGIC 0x4345524450524351ULL /* "QCPRDREC" */
#define NET_REC 64

/* Written by one thread, read by the heartbeat: no stale copies. */
static volatile uint64_t mem_passes, errors;
/* Set when the guest powers off: the busy threads stop */
static volatile int powering_off;

/*
 * A TCP stream of numbered records to a peer: over eth0, or over a NIC the
 * host hot-plugs (@ifname), configured with @ip once it appears.  The
 * stream of a hot-plugged NIC ends quietly when the host takes the NIC
 * away, and starts again (its numbers going on) if one comes back.
 */
struct net_stream {
    const char *name;
    char *peer;                 /* <ipv4>:<port> */
    const char *ifname;
    char *ip;                   /* <ipv4>/<prefix> */
    volatile uint64_t records;
};

static struct net_stream net0 = { .name = "net" };
static struct net_stream net1 = { .name = "net2", .ifname = "eth1" };
static volatile uint64_t disk_records[3];   /* likewise */
static char last_error[160];
static pthread_mutex_t err_lock = PTHREAD_MUTEX_INITIALIZER;
static int tty0 = -1, tty1 = -1, tty2 = -1;

static void fail(const char *fmt, ...)
{
    va_list ap;

    pthread_mutex_lock(&err_lock);
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof(last_error), fmt, ap);
    va_end(ap);
    errors++;
    pthread_mutex_unlock(&err_lock);
}

static void write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return;
        }
        buf += n;
        len -= n;
    }
}

static char *cmdline_param(const char *name)
{
    static char cmdline[4096];
    char key[64], *p;
    size_t len;
    FILE *f;

    if (!cmdline[0]) {
        f = fopen("/proc/cmdline", "r");
        if (!f || !fgets(cmdline, sizeof(cmdline), f)) {
            return NULL;
        }
        fclose(f);
    }
    snprintf(key, sizeof(key), "%s=", name);
    for (p = cmdline; (p = strstr(p, key)) != NULL; p++) {
        if (p == cmdline || p[-1] == ' ') {
            p += strlen(key);
            len = strcspn(p, "\n ");
            return strndup(p, len);
        }
    }
    return NULL;
}

/* Seconds since the epoch by the CMOS RTC (/dev/rtc0), or 0 */
static uint64_t rtc_seconds(void)
{
    static int fd = -2;
    struct rtc_time rt;
    struct tm tm = { 0 };

    if (fd == -2) {
        fd = open("/dev/rtc0", O_RDONLY);
    }
    if (fd < 0 || ioctl(fd, RTC_RD_TIME, &rt) < 0) {
        return 0;
    }
    tm.tm_sec = rt.tm_sec;
    tm.tm_min = rt.tm_min;
    tm.tm_hour = rt.tm_hour;
    tm.tm_mday = rt.tm_mday;
    tm.tm_mon = rt.tm_mon;
    tm.tm_year = rt.tm_year;
    return timegm(&tm);
}

static uint64_t now_ms(clockid_t clk)
{
    struct timespec ts;

    clock_gettime(clk, &ts);
    return ts.tv_sec * 1000ULL + ts.tv_nsec / 1000000;
}

static void timespec_add_ns(struct timespec *ts, long ns)
{
    ts->tv_nsec += ns;
    while (ts->tv_nsec >= 1000000000L) {
        ts->tv_nsec -= 1000000000L;
        ts->tv_sec++;
    }
}

#define CPU_BEAT_NS (10 * 1000 * 1000)

/* One per CPU, bound to it, at real-time priority below the heartbeat's */
static void *cpu_heartbeat(void *opaque)
{
    int cpu = (int)(uintptr_t)opaque;
    struct sched_param sp = { .sched_priority = 40 };
    struct timespec next;
    cpu_set_t set;
    uint64_t seq = 0;
    char line[64];
    int n;

    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set) != 0) {
        fail("cannot bind a thread to CPU %d", cpu);
        return NULL;
    }
    pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp);
    clock_gettime(CLOCK_MONOTONIC, &next);
    while (!powering_off) {
        if (sched_getcpu() != cpu) {
            fail("CPU %d heartbeat ran on CPU %d", cpu, sched_getcpu());
        }
        n = snprintf(line, sizeof(line), "C %d %llu\n", cpu,
                     (unsigned long long)seq++);
        write_all(tty0, line, n);
        timespec_add_ns(&next, CPU_BEAT_NS);
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next,
                               NULL) == EINTR) {
            continue;
        }
    }
    return NULL;
}

/* Runs on the main thread at real-time priority. */
static void heartbeat(void)
{
    struct sched_param sp = { .sched_priority = 50 };
    struct timespec next;
    uint64_t seq = 0;
    char line[256];
    int n;

    sched_setscheduler(0, SCHED_FIFO, &sp);
    clock_gettime(CLOCK_MONOTONIC, &next);
    while (!powering_off) {
        n = snprintf(line, sizeof(line), "H %llu\n",
                     (unsigned long long)seq);
        write_all(tty0, line, n);
        if (seq % 1000 == 0) {
            pthread_mutex_lock(&err_lock);
            n = snprintf(line, sizeof(line),
                         "S %llu up=%llu rtc=%llu mem=%llu net=%llu "
                         "vda=%llu vdb=%llu vdc=%llu err=%llu cpus=%ld "
                         "net2=%llu\n",
                         (unsigned long long)seq,
                         (unsigned long long)now_ms(CLOCK_BOOTTIME),
                         (unsigned long long)rtc_seconds(),
                         (unsigned long long)mem_passes,
                         (unsigned long long)net0.records,
                         (unsigned long long)disk_records[0],
                         (unsigned long long)disk_records[1],
                         (unsigned long long)disk_records[2],
                         (unsigned long long)errors,
                         sysconf(_SC_NPROCESSORS_ONLN),
                         (unsigned long long)net1.records);
            if (errors && last_error[0]) {
                n += snprintf(line + n, sizeof(line) - n, "E %s\n",
                              last_error);
                last_error[0] = 0;
            }
            pthread_mutex_unlock(&err_lock);
            write_all(tty0, line, n);
            if (tty1 >= 0) {
                write_all(tty1, line, n);
            }
            if (tty2 >= 0) {
                write_all(tty2, line, n);
            }
        }
        seq++;
        timespec_add_ns(&next, 1000000);
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next,
                               NULL) == EINTR) {
            continue;
        }
    }
    /* Powering off: init must not exit */
    for (;;) {
        pause();
    }
}

static void *memory_worker(void *opaque)
{
    size_t words = (size_t)(uintptr_t)opaque / sizeof(uint64_t);
    uint64_t *buf, pass, i, tag;

    setpriority(PRIO_PROCESS, 0, 10);
    buf = mmap(NULL, words * sizeof(uint64_t), PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (buf == MAP_FAILED) {
        fail("mem: mmap: %s", strerror(errno));
        return NULL;
    }
    for (pass = 1; !powering_off; pass++) {
        tag = pass << 40;
        for (i = 0; i < words; i++) {
            buf[i] = tag | i;
        }
        for (i = 0; i < words; i++) {
            if (buf[i] != (tag | i)) {
                fail("mem: pass %llu word %llu is %llx",
                     (unsigned long long)pass, (unsigned long long)i,
                     (unsigned long long)buf[i]);
                break;
            }
        }
        mem_passes = pass;
    }
    return NULL;
}

/* Until @path exists (a device the host hot-plugs) */
static void wait_for_path(const char *path)
{
    while (access(path, F_OK) < 0) {
        usleep(100 * 1000);
    }
}

static int net_connect(struct net_stream *ns, struct sockaddr_in *sa)
{
    char path[64], cmd[160];
    int fd;

    snprintf(path, sizeof(path), "/sys/class/net/%s", ns->ifname ?: "lo");
    wait_for_path(path);
    if (ns->ifname) {
        snprintf(cmd, sizeof(cmd), "ip addr add %s dev %s 2>/dev/null; "
                 "ip link set %s up", ns->ip, ns->ifname, ns->ifname);
        if (system(cmd) != 0) {
            fail("%s: cannot configure %s", ns->name, ns->ifname);
        }
    }
    /* The peer may come up after the guest: retry until it answers. */
    for (;;) {
        fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)sa, sizeof(*sa)) == 0) {
            return fd;
        }
        close(fd);
        sleep(1);
        if (access(path, F_OK) < 0) {
            return -1;          /* the NIC went away */
        }
    }
}

static void *net_worker(void *opaque)
{
    struct net_stream *ns = opaque;
    char host[64], rec[NET_REC];
    struct sockaddr_in sa = { .sin_family = AF_INET };
    struct timespec next;
    uint64_t seq = 0;
    const char *colon = strchr(ns->peer, ':');
    int one = 1, fd = -1;

    if (!colon || colon - ns->peer >= (long)sizeof(host)) {
        fail("%s: bad peer %s", ns->name, ns->peer);
        return NULL;
    }
    memcpy(host, ns->peer, colon - ns->peer);
    host[colon - ns->peer] = 0;
    sa.sin_port = htons(atoi(colon + 1));
    inet_pton(AF_INET, host, &sa.sin_addr);

    while (!powering_off) {
        fd = net_connect(ns, &sa);
        if (fd < 0) {
            continue;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        clock_gettime(CLOCK_MONOTONIC, &next);
        while (!powering_off) {
            memset(rec, (int)(seq & 0xff), sizeof(rec));
            memcpy(rec, &seq, sizeof(seq));
            if (send(fd, rec, sizeof(rec), MSG_NOSIGNAL) != sizeof(rec)) {
                if (!ns->ifname) {
                    fail("%s: send record %llu: %s", ns->name,
                         (unsigned long long)seq, strerror(errno));
                    close(fd);
                    return NULL;
                }
                break;
            }
            ns->records = ++seq;
            timespec_add_ns(&next, 2000000);
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
        }
        close(fd);
    }
    return NULL;
}

/*
 * A disk worker holds its disk's lock while it writes and checks one
 * record.  Powering off takes both locks first: since Linux resets virtio
 * devices in device_shutdown(), a write still in flight would fail.
 */
struct disk {
    int index;
    char path[32];
    pthread_mutex_t lock;
};

static struct disk disks[3] = {
    { 0, "/dev/vda", PTHREAD_MUTEX_INITIALIZER },
    { 1, "/dev/vdb", PTHREAD_MUTEX_INITIALIZER },
    { 2, "/dev/vdc", PTHREAD_MUTEX_INITIALIZER },   /* hot-plugged */
};

static void fill_record(uint8_t *rec, uint64_t seq, uint64_t sector)
{
    uint64_t hdr[3] = { REC_MAGIC, seq, sector };
    int i;

    memcpy(rec, hdr, sizeof(hdr));
    for (i = sizeof(hdr); i < SECTOR; i++) {
        rec[i] = (uint8_t)(seq * 31 + i);
    }
}

/*
 * Record seq lives in sector seq % nsect; a sector holds the newest record
 * written to it.  Checks that sector s holds record expect.
 */
static int check_record(int fd, uint8_t *buf, uint64_t s, uint64_t expect,
                        const char *path)
{
    static __thread uint8_t want[SECTOR];

    if (pread(fd, buf, SECTOR, s * SECTOR) != SECTOR) {
        fail("%s: read sector %llu: %s", path, (unsigned long long)s,
             strerror(errno));
        return -1;
    }
    fill_record(want, expect, s);
    if (memcmp(buf, want, SECTOR)) {
        fail("%s: sector %llu does not hold record %llu (has %llu)", path,
             (unsigned long long)s, (unsigned long long)expect,
             (unsigned long long)((uint64_t *)buf)[1]);
        return -1;
    }
    return 0;
}

static void *disk_worker(void *opaque)
{
    struct disk *d = opaque;
    uint64_t size = 0, nsect, seq, old;
    uint8_t *buf;
    int fd;

    setpriority(PRIO_PROCESS, 0, 5);
    fd = open(d->path, O_RDWR | O_DIRECT);
    if (fd < 0 || ioctl(fd, BLKGETSIZE64, &size) < 0 || size < SECTOR) {
        fail("%s: open: %s", d->path, strerror(errno));
        return NULL;
    }
    nsect = size / SECTOR;
    if (posix_memalign((void **)&buf, 4096, SECTOR)) {
        return NULL;
    }
    for (seq = 0;; seq++) {
        uint64_t s = seq % nsect;

        pthread_mutex_lock(&d->lock);
        fill_record(buf, seq, s);
        if (pwrite(fd, buf, SECTOR, s * SECTOR) != SECTOR ||
            fdatasync(fd) < 0) {
            fail("%s: write record %llu: %s", d->path,
                 (unsigned long long)seq, strerror(errno));
            break;
        }
        if (check_record(fd, buf, s, seq, d->path) < 0) {
            break;
        }
        /* Re-read an older record: the one 7/8 of a lap behind, if any. */
        old = seq - (nsect * 7 / 8);
        if (seq >= nsect * 7 / 8 &&
            check_record(fd, buf, old % nsect, old, d->path) < 0) {
            break;
        }
        disk_records[d->index] = seq + 1;
        pthread_mutex_unlock(&d->lock);
        usleep(1000);
    }
    pthread_mutex_unlock(&d->lock);
    return NULL;
}

/* Each line of @path to ttyS0 as "K @prefix<line>" */
static void dump_file(const char *path, const char *prefix)
{
    char line[512], out[600];
    FILE *f = fopen(path, "r");
    int n;

    while (f && fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = 0;
        n = snprintf(out, sizeof(out), "K %.300s%.290s\n", prefix, line);
        write_all(tty0, out, n);
    }
    if (f) {
        fclose(f);
    }
}

/* The stacks of the running and blocked tasks and of the IRQ threads */
static void dump_tasks(void)
{
    char path[300], stat[256], label[300], *end;
    struct dirent *de;
    DIR *dir = opendir("/proc");
    FILE *f;

    while (dir && (de = readdir(dir)) != NULL) {
        char state;

        if (de->d_name[0] < '1' || de->d_name[0] > '9') {
            continue;
        }
        snprintf(path, sizeof(path), "/proc/%s/stat", de->d_name);
        f = fopen(path, "r");
        if (!f) {
            continue;
        }
        end = fgets(stat, sizeof(stat), f) ? strrchr(stat, ')') : NULL;
        fclose(f);
        if (!end || !end[1]) {
            continue;
        }
        state = end[2];
        if (state != 'R' && state != 'D' && !strstr(stat, "(irq/")) {
            continue;
        }
        *end = 0;
        snprintf(label, sizeof(label), "task %.200s) %c: ", stat, state);
        snprintf(path, sizeof(path), "/proc/%s/stack", de->d_name);
        dump_file(path, label);
    }
    if (dir) {
        closedir(dir);
    }
}

/*
 * Runs once the power button was seen.  If the guest is still up 15 s
 * later, the power-off hangs: dump the blocked tasks (SysRq w, l) and the
 * kernel log (where initcall_debug names each device being shut down) to
 * ttyS0 as "K <text>" lines (its last KMSG_TAIL lines), then the stacks
 * of the running and blocked tasks and the interrupt counts, for the host
 * to report.
 */
#define KMSG_TAIL 100

static void *poweroff_watchdog(void *opaque)
{
    static char tail[KMSG_TAIL][600];
    char rec[1024];
    unsigned nr = 0, i;
    ssize_t n;
    int fd;

    sleep(15);
    write_all(tty0, "P still up 15 s after the power button\n", 39);
    fd = open("/proc/sysrq-trigger", O_WRONLY);
    if (fd >= 0) {
        write_all(fd, "w", 1);
        write_all(fd, "l", 1);
        close(fd);
    }
    /* The end of the kernel log */
    fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK);
    while (fd >= 0 && (n = read(fd, rec, sizeof(rec) - 1)) != 0) {
        char *text;

        if (n < 0) {
            if (errno == EPIPE) {
                continue;       /* overwritten while read: the next one */
            }
            break;
        }
        rec[n] = 0;
        text = strchr(rec, ';');
        text = text ? text + 1 : rec;
        text[strcspn(text, "\n")] = 0;
        snprintf(tail[nr++ % KMSG_TAIL], sizeof(tail[0]), "K %.590s\n", text);
    }
    if (fd >= 0) {
        close(fd);
    }
    for (i = nr > KMSG_TAIL ? nr - KMSG_TAIL : 0; i < nr; i++) {
        write_all(tty0, tail[i % KMSG_TAIL], strlen(tail[i % KMSG_TAIL]));
    }
    dump_tasks();
    dump_file("/proc/interrupts", "");
    return NULL;
}

/* The third disk, hot-plugged by the host: written once it shows up */
static void *hotplug_disk_watcher(void *opaque)
{
    struct disk *d = opaque;
    int fd, tries = 0;

    wait_for_path(d->path);
    /*
     * The node shows up before the kernel has the disk live, when
     * opening it fails with ENXIO (seen with four vCPUs): a moment more
     */
    while ((fd = open(d->path, O_RDONLY)) < 0 && errno == ENXIO &&
           ++tries < 100) {
        usleep(100 * 1000);
    }
    if (fd >= 0) {
        close(fd);
    }
    return disk_worker(d);
}

static void *power_worker(void *opaque)
{
    struct input_event ev;
    char path[300], name[128];
    struct dirent *de;
    DIR *dir;
    FILE *f;
    int fd = -1;

    dir = opendir("/sys/class/input");
    while (dir && (de = readdir(dir)) != NULL) {
        if (strncmp(de->d_name, "event", 5)) {
            continue;
        }
        snprintf(path, sizeof(path), "/sys/class/input/%s/device/name",
                 de->d_name);
        f = fopen(path, "r");
        if (!f) {
            continue;
        }
        if (fgets(name, sizeof(name), f) && strstr(name, "Power Button")) {
            snprintf(path, sizeof(path), "/dev/input/%s", de->d_name);
            fd = open(path, O_RDONLY);
        }
        fclose(f);
        if (fd >= 0) {
            break;
        }
    }
    if (dir) {
        closedir(dir);
    }
    if (fd < 0) {
        fail("power: no power button input device");
        return NULL;
    }
    while (read(fd, &ev, sizeof(ev)) == sizeof(ev)) {
        if (ev.type == EV_KEY && ev.code == KEY_POWER && ev.value) {
            cpu_set_t cpu0;
            pthread_t t;

            write_all(tty0, "P poweroff\n", 11);
            pthread_create(&t, NULL, poweroff_watchdog, NULL);
            /* Held until the end: no record is written after this. */
            pthread_mutex_lock(&disks[0].lock);
            pthread_mutex_lock(&disks[1].lock);
            pthread_mutex_lock(&disks[2].lock);
            write_all(tty0, "P disks idle\n", 13);
            sync();
            write_all(tty0, "P synced\n", 9);
            /*
             * The kernel powers off on CPU 0: be there already, and let
             * the busy threads and the heartbeat stop (with four CPUs
             * under TCG, a power-off behind them sometimes never
             * finished)
             */
            powering_off = 1;
            CPU_ZERO(&cpu0);
            CPU_SET(0, &cpu0);
            sched_setaffinity(0, sizeof(cpu0), &cpu0);
            write_all(tty0, "P on CPU 0\n", 11);
            /* The kernel's last words must not cut a line of ours */
            tcdrain(tty0);
            reboot(LINUX_REBOOT_CMD_POWER_OFF);
            write_all(tty0, "P reboot() returned\n", 20);
        }
    }
    return NULL;
}

int main(void)
{
    char *mem = cmdline_param("cpr.mem");

    pthread_t t;
    int i;

    tty0 = open("/dev/ttyS0", O_WRONLY | O_NOCTTY);
    tty1 = open("/dev/ttyS1", O_WRONLY | O_NOCTTY);
    tty2 = open("/dev/ttyS2", O_WRONLY | O_NOCTTY);
    if (tty0 < 0) {
        return 1;
    }
    write_all(tty0, "W workload started\n", 19);
    pthread_create(&t, NULL, memory_worker,
                   (void *)(uintptr_t)((mem ? atoi(mem) : 64) << 20));
    net0.peer = cmdline_param("cpr.peer");
    if (net0.peer) {
        pthread_create(&t, NULL, net_worker, &net0);
    }
    net1.peer = cmdline_param("cpr.peer2");
    net1.ip = cmdline_param("cpr.ip2");
    if (net1.peer && net1.ip) {
        pthread_create(&t, NULL, net_worker, &net1);
    }
    for (i = 0; i < 2; i++) {
        if (access(disks[i].path, F_OK) == 0) {
            pthread_create(&t, NULL, disk_worker, &disks[i]);
        }
    }
    pthread_create(&t, NULL, hotplug_disk_watcher, &disks[2]);
    pthread_create(&t, NULL, power_worker, NULL);
    for (i = 0; i < sysconf(_SC_NPROCESSORS_ONLN); i++) {
        pthread_create(&t, NULL, cpu_heartbeat, (void *)(uintptr_t)i);
    }
    heartbeat();
    return 0;
}
