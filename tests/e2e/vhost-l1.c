/*
 * The vhost-net live-update test, run inside the L1 guest (kernel
 * argument cpr.test=vhost, see scripts/vfio-l1.sh), whose Debian kernel
 * has vhost-net (this machine's kernel has not).
 *
 * Our QEMU runs the L2 guest tests/guest/net-guest.c, which streams TCP
 * through virtio-net on a tap netdev with vhost=on to a receiver in this
 * program, which checks every byte.  The VM is live-updated with cprsave
 * restart (first from anonymous RAM, which the update moves into memfds
 * while vhost writes to it) and with cprsave transfer, then started as
 * libvirt starts it, with the tap and /dev/vhost-net opened by us and
 * passed as fd= and vhostfd=, and updated again.  After each update the
 * same connection must go on, with the vhost worker of the process that
 * runs the VM moving the packets.  Prints TAP on stdout (L1's console),
 * which tests/e2e/vhost-update.py relays.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "l1-lib.h"

#define TAP_NAME        "cprtap0"
#define PEER_IP         "10.0.4.1"      /* tests/guest/net-guest.c */
#define PEER_PORT       5001
#define GUEST_KERNEL    "/net-guest.elf"
#define UPDATES         3
/* Stream bytes each check waits for */
#define PROGRESS        (256 * 1024)

/* The mailbox of tests/guest/net-guest.c */
struct mailbox {
    uint32_t magic, state, acked, segments, resent, rx_packets;
    uint32_t arp_answers, errors, last_error, queue_sizes;
};

#define NET_MAGIC       0x4e455447
#define ST_ESTABLISHED  3

/* What the receiver saw, shared with its thread */
static struct {
    pthread_mutex_t lock;
    int connections;            /* accepted so far */
    uint64_t bytes;             /* of the current connection */
    uint64_t bad_at;            /* + 1: first byte out of the pattern */
    int ended;                  /* the current connection ended */
} rx = { PTHREAD_MUTEX_INITIALIZER };

/*
 * Accept connections on @opaque, the listening socket, and check what
 * they carry; a new connection (a new VM) replaces the current one.
 */
static void *receiver(void *opaque)
{
    static unsigned char buf[65536];
    struct pollfd p[2] = { { .fd = (int)(intptr_t)opaque, .events = POLLIN },
                           { .fd = -1, .events = POLLIN } };

    for (;;) {
        ssize_t n, i;

        if (poll(p, 2, -1) <= 0) {
            continue;
        }
        if (p[0].revents & POLLIN) {
            int c = accept(p[0].fd, NULL, NULL);

            if (c >= 0) {
                if (p[1].fd >= 0) {
                    close(p[1].fd);
                }
                p[1].fd = c;
                pthread_mutex_lock(&rx.lock);
                rx.connections++;
                rx.bytes = 0;
                rx.bad_at = 0;
                rx.ended = 0;
                pthread_mutex_unlock(&rx.lock);
            }
            continue;
        }
        if (!p[1].revents) {
            continue;
        }
        n = read(p[1].fd, buf, sizeof(buf));
        pthread_mutex_lock(&rx.lock);
        for (i = 0; i < n && !rx.bad_at; i++) {
            if (buf[i] != (rx.bytes + i) % 251) {
                rx.bad_at = rx.bytes + i + 1;
            }
        }
        if (n > 0) {
            rx.bytes += n;
        } else {
            rx.ended = 1;
            close(p[1].fd);
            p[1].fd = -1;
        }
        pthread_mutex_unlock(&rx.lock);
    }
    return NULL;
}

/* The persistent tap with our address, and the receiver on it */
static int setup_network(void)
{
    struct sockaddr_in sa = { .sin_family = AF_INET,
                              .sin_port = htons(PEER_PORT) };
    struct ifreq ifr = { .ifr_flags = IFF_TAP | IFF_NO_PI };
    pthread_t thread;
    int fd, lfd, one = 1;

    fd = open("/dev/net/tun", O_RDWR);
    strcpy(ifr.ifr_name, TAP_NAME);
    if (fd < 0 || ioctl(fd, TUNSETIFF, &ifr) < 0 ||
        ioctl(fd, TUNSETPERSIST, 1) < 0) {
        diag("cannot create " TAP_NAME);
        return -1;
    }
    close(fd);
    if (system("ip addr add " PEER_IP "/24 dev " TAP_NAME " && "
               "ip link set " TAP_NAME " up")) {
        diag("cannot configure " TAP_NAME);
        return -1;
    }
    inet_pton(AF_INET, PEER_IP, &sa.sin_addr);
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        listen(lfd, 4) < 0 ||
        pthread_create(&thread, NULL, receiver, (void *)(intptr_t)lfd)) {
        diag("cannot listen on " PEER_IP);
        return -1;
    }
    return 0;
}

/*
 * QEMU on the L2 guest; the netdev opens the tap and /dev/vhost-net
 * itself, or takes @tap_fd and @vhost_fd (>= 0) as libvirt gives them.
 * With @incoming, to take the VM over with cprsave transfer.
 */
static pid_t start_qemu(int memfd, int tap_fd, int vhost_fd, int incoming)
{
    char netdev[160], machine[QEMU_MACHINE_LEN];
    const char *argv[32];
    int i;

    if (tap_fd >= 0) {
        snprintf(netdev, sizeof(netdev), "tap,id=net0,fd=%d,vhost=on,"
                 "vhostfd=%d", tap_fd, vhost_fd);
    } else {
        snprintf(netdev, sizeof(netdev), "tap,id=net0,ifname=" TAP_NAME
                 ",script=no,downscript=no,vhost=on");
    }
    i = qemu_args(argv, machine, memfd, GUEST_KERNEL);
    argv[i++] = "-netdev";
    argv[i++] = netdev;
    argv[i++] = "-device";
    argv[i++] = "virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56,romfile=";
    argv[i++] = "-trace";
    argv[i++] = "vhost_net_cpr_*";
    if (incoming) {
        argv[i++] = "-incoming";
        argv[i++] = "cpr:unix:" CPR_SOCK;
    }
    argv[i] = NULL;
    return spawn_qemu(argv, incoming, -1);
}

/* The tap (with a vnet header) and /dev/vhost-net, as libvirt opens them */
static int open_like_libvirt(int *tap_fd, int *vhost_fd)
{
    struct ifreq ifr = { .ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR };

    strcpy(ifr.ifr_name, TAP_NAME);
    *tap_fd = open("/dev/net/tun", O_RDWR);
    *vhost_fd = open("/dev/vhost-net", O_RDWR);
    if (*tap_fd < 0 || *vhost_fd < 0 || ioctl(*tap_fd, TUNSETIFF, &ifr) < 0) {
        diag("cannot open the tap and /dev/vhost-net");
        return -1;
    }
    return 0;
}

/*
 * The kernel's vhost worker of QEMU process @pid, named "vhost-TID" after
 * the thread that made QEMU its owner, and its context switches in
 * @switches: each is a wake-up to move packets.  The worker's pid, or -1
 * if there is none.
 */
static int vhost_worker(pid_t pid, long *switches)
{
    char path[300], buf[2048], *p;
    struct dirent *d;
    struct stat st;
    DIR *proc = opendir("/proc");
    int found = -1;

    while (proc && found < 0 && (d = readdir(proc)) != NULL) {
        snprintf(path, sizeof(path), "/proc/%s/comm", d->d_name);
        if (read_file(path, buf, sizeof(buf)) <= 0 ||
            strncmp(buf, "vhost-", 6)) {
            continue;
        }
        snprintf(path, sizeof(path), "/proc/%d/task/%d", (int)pid,
                 atoi(buf + 6));
        if (stat(path, &st) == 0) {
            found = atoi(d->d_name);
        }
    }
    if (proc) {
        closedir(proc);
    }
    *switches = 0;
    if (found > 0) {
        snprintf(path, sizeof(path), "/proc/%d/status", found);
        p = read_file(path, buf, sizeof(buf)) > 0 ?
            strstr(buf, "voluntary_ctxt_switches:") : NULL;
        if (p) {
            *switches = atol(p + 24);
        }
    }
    return found;
}

/* Descriptors of @pid open on /dev/vhost-net */
static int vhost_fds(pid_t pid)
{
    char path[300], link[64];
    struct dirent *d;
    DIR *dir;
    int n = 0;
    ssize_t len;

    snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
    dir = opendir(path);
    while (dir && (d = readdir(dir)) != NULL) {
        snprintf(path, sizeof(path), "/proc/%d/fd/%s", (int)pid, d->d_name);
        len = readlink(path, link, sizeof(link) - 1);
        if (len > 0) {
            link[len] = 0;
            n += !strcmp(link, "/dev/vhost-net");
        }
    }
    if (dir) {
        closedir(dir);
    }
    return n;
}

static void show_guest(void)
{
    struct mailbox mb;

    if (read_mem(&mb, sizeof(mb)) == 0) {
        diag("guest: magic %x state %u acked %u segments %u resent %u "
             "rx %u arp %u errors %u (last %u) queues %x", mb.magic,
             mb.state, mb.acked, mb.segments, mb.resent, mb.rx_packets,
             mb.arp_answers, mb.errors, mb.last_error, mb.queue_sizes);
    }
}

/*
 * Wait until the stream of connection @conn has grown by PROGRESS bytes,
 * every one as sent, with the vhost worker of qemu_pid moving them; 0 if
 * it did.
 */
static int stream_goes_on(int conn)
{
    double deadline = now() + 300;
    uint64_t start = 0;
    long sw0, sw1;
    int first = 1;

    if (vhost_worker(qemu_pid, &sw0) < 0 || vhost_fds(qemu_pid) != 1) {
        diag("QEMU %d has no vhost worker, or not one /dev/vhost-net "
             "(%d)", (int)qemu_pid, vhost_fds(qemu_pid));
        show_qemu_log();
        return -1;
    }
    for (;;) {
        int ok, bad;

        pthread_mutex_lock(&rx.lock);
        if (first && rx.connections == conn) {
            start = rx.bytes;
            first = 0;
        }
        ok = rx.connections == conn && !rx.ended && !rx.bad_at &&
             !first && rx.bytes >= start + PROGRESS;
        bad = rx.connections > conn || rx.ended || rx.bad_at;
        if (bad) {
            diag("connections %d (want %d), ended %d, byte %llu out of "
                 "the pattern", rx.connections, conn, rx.ended,
                 (unsigned long long)rx.bad_at);
        }
        pthread_mutex_unlock(&rx.lock);
        if (ok || bad || now() > deadline) {
            vhost_worker(qemu_pid, &sw1);
            if (ok && sw1 <= sw0) {
                diag("the vhost worker of QEMU %d did not run",
                     (int)qemu_pid);
                ok = 0;
            }
            if (!ok) {
                diag("%s", bad ? "stream broken" : "no progress");
                show_guest();
                show_qemu_log();
            }
            return ok ? 0 : -1;
        }
        usleep(100000);
    }
}

/* Lines of QEMU's log (its trace of vhost_net_cpr_*) that hold @what */
static int log_count(const char *what)
{
    static char buf[1 << 18];
    const char *p = buf;
    int n = 0;

    if (read_file("/tmp/qemu.log", buf, sizeof(buf)) < 0) {
        return -1;
    }
    while ((p = strstr(p, what)) != NULL) {
        n++;
        p++;
    }
    return n;
}

static uint64_t stream_bytes(void)
{
    uint64_t n;

    pthread_mutex_lock(&rx.lock);
    n = rx.bytes;
    pthread_mutex_unlock(&rx.lock);
    return n;
}

/* @n restart updates, the stream of @conn going on after each */
static int updates(int conn, int n, const char *what)
{
    char pauses[128] = "";
    size_t len = 0;
    int i;

    for (i = 0; i < n; i++) {
        int kept = log_count("vhost_net_cpr_keep netdev net0 ");

        if (cprsave() < 0 || cprload() < 0) {
            return -1;
        }
        /* The old process gave the device up and kept it */
        if (log_count("vhost_net_cpr_keep netdev net0 ") != kept + 1) {
            diag("the vhost-net device was not kept");
            show_qemu_log();
            return -1;
        }
        len += snprintf(pauses + len, sizeof(pauses) - len, " %.1f",
                        (ev_resume - ev_stop) * 1e3);
        if (len >= sizeof(pauses) || stream_goes_on(conn) < 0) {
            return -1;
        }
    }
    diag("pause %s (ms, QMP STOP -> RESUME):%s; stream at %llu bytes",
         what, pauses, (unsigned long long)stream_bytes());
    return 0;
}

int main(void)
{
    int ok, i, tap_fd, vhost_fd;

    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    printf("TAP version 14\n1..7\n");
    if (access("/dev/vhost-net", F_OK) || setup_network() < 0) {
        result(0, "L1 has vhost-net and the guest's network");
        return 1;
    }
    result(1, "L1 has vhost-net and the guest's network");

    /* Anonymous RAM: the first update moves it while vhost writes to it */
    qemu_pid = start_qemu(0, -1, -1, 0);
    ok = qmp_connect() == 0 && stream_goes_on(1) == 0;
    result(ok, "the L2 guest streams TCP through virtio-net with vhost=on");
    ok = ok && updates(1, UPDATES, "with vhost-net") == 0;
    result(ok, "cprsave restart: the stream goes on, on the same "
           "connection, through the new process's vhost worker");

    for (i = 0; i < 2 && ok; i++) {
        /* (a command after it: RESUME may come after the answer) */
        ok = transfer_to(start_qemu(1, -1, -1, 1), NULL) == 0 &&
             stream_goes_on(1) == 0 &&
             qmp_ok("{\"execute\": \"query-status\"}");
        diag("pause of transfer %d (ms, QMP STOP -> RESUME): %.1f", i + 1,
             (ev_resume - ev_stop) * 1e3);
    }
    ok = ok && qmp_ok("{\"execute\": \"cprsave\", \"arguments\": "
                      "{\"mode\": \"restart\", \"relay\": true}}") &&
         stream_goes_on(1) == 0;
    result(ok, "cprsave transfer, and restart through a relay: the same, "
           "into new processes");

    /* As libvirt runs it: descriptors passed by number */
    stop_qemu();
    ok = open_like_libvirt(&tap_fd, &vhost_fd) == 0;
    if (ok) {
        qemu_pid = start_qemu(0, tap_fd, vhost_fd, 0);
        close(tap_fd);
        close(vhost_fd);
        ok = qmp_connect() == 0 && stream_goes_on(2) == 0 &&
             updates(2, UPDATES, "with fd= and vhostfd=") == 0;
    }
    result(ok, "tap fd= and vhostfd= given by the caller (libvirt): "
           "cprsave restart keeps them, the stream goes on");

    /* The device gave up its owner before execve, and takes it back */
    ok = ok && make_not_a_program() &&
         cprsave_refused(", \"binary\": \"" NOT_A_PROGRAM "\"",
                         "cannot execute") &&
         log_count("vhost_net_cpr_own_again netdev net0 ") == 1 &&
         stream_goes_on(2) == 0 && updates(2, 1, "after it") == 0;
    result(ok, "a failed execve gives the old process its vhost-net device "
           "back; the stream goes on, and the next update works");

    /*
     * A relay process starts from the command line alone and cannot use
     * vhostfd=: cprsave fails and the VM runs on here
     */
    if (ok) {
        char *line = qmp_cmd("{\"execute\": \"cprsave\", \"arguments\": "
                             "{\"mode\": \"restart\", \"relay\": true}}");

        ok = line && strstr(line, "did not start");
        diag("cprsave relay: %s", line ? line : "(connection lost)");
        free(line);
    }
    ok = ok && stream_goes_on(2) == 0;
    result(ok, "restart through a relay with vhostfd= fails (the relay "
           "cannot use the descriptor); the VM runs on, the stream goes on");
    stop_qemu();
    return failed;
}
