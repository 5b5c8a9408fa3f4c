/*
 * The VFIO live-update test, run inside the L1 guest (scripts/vfio-l1.sh)
 * as part of its init.  L1 has an emulated edu device (MSI) and an NVMe
 * controller (MSI-X) behind an emulated IOMMU; this program binds them to
 * vfio-pci, starts our QEMU on an L2 guest driving one of them
 * (tests/guest/edu-guest.c, nvme-guest.c) with the device passed through,
 * and checks that DMA and interrupts go on across cprsave/cprload.  Prints
 * TAP on stdout (L1's console), which tests/e2e/vfio-update.py relays.
 *
 * With "reboot-save DIR" and "reboot-load DIR" it is the inside of the
 * reboot-mode test instead (tests/e2e/reboot-l1.py): an L2 guest saved
 * with cprsave reboot to L1's disk before L1's kernel restarts, and
 * restored by a fresh QEMU after it; TAP lines without a plan.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
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
#define MAILBOX_MAGIC   0x45445547
#define UPDATES         3

/* The mailboxes of tests/guest/edu-guest.c and nvme-guest.c */
struct mailbox {
    uint32_t magic, edu_id, bar0, rounds, errors, last_error;
    uint32_t dma_irqs, dma_done, spurious, fact;
};

#define NVME_MAGIC      0x454d564e
#define NVME_PENDING    1
#define NVME_MASKED     2

struct nvme_mailbox {
    uint32_t magic, bar0, rounds, errors, last_error;
    uint32_t irqs[2], completions[2];
    uint32_t phase, pending_ok, masked_ok;
};

/* A device of L1 given to vfio-pci */
struct l1_dev {
    const char *name, *id;      /* sysfs "vendor device", as new_id takes */
    char bdf[32];
    char group[64];             /* /dev/vfio/N */
};

static struct l1_dev edu = { "edu", "1234 11e8" };
static struct l1_dev nvme = { "nvme", "1b36 0010" };
static struct l1_dev *passed;   /* the device the running QEMU has */
static const char *guest_kernel;    /* and the L2 guest it runs */

/* Find @dev in L1 and bind it to vfio-pci. */
static int bind_device(struct l1_dev *dev)
{
    char path[512], buf[64], vendor[16], device[16];
    struct dirent *de;
    DIR *d = opendir("/sys/bus/pci/devices");
    ssize_t n;

    snprintf(vendor, sizeof(vendor), "0x%.4s", dev->id);
    snprintf(device, sizeof(device), "0x%.4s", dev->id + 5);
    while (d && (de = readdir(d)) != NULL) {
        snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/vendor",
                 de->d_name);
        if (read_file(path, buf, sizeof(buf)) < 0 ||
            strncmp(buf, vendor, 6)) {
            continue;
        }
        snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/device",
                 de->d_name);
        if (read_file(path, buf, sizeof(buf)) >= 0 &&
            !strncmp(buf, device, 6)) {
            snprintf(dev->bdf, sizeof(dev->bdf), "%.31s", de->d_name);
        }
    }
    if (d) {
        closedir(d);
    }
    if (!dev->bdf[0]) {
        diag("no %s device in L1", dev->name);
        return -1;
    }
    if (write_file("/sys/bus/pci/drivers/vfio-pci/new_id", dev->id) < 0) {
        diag("cannot bind %s to vfio-pci: %s", dev->name, strerror(errno));
        return -1;
    }
    snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/iommu_group",
             dev->bdf);
    n = readlink(path, buf, sizeof(buf) - 1);
    if (n < 0) {
        diag("%s has no IOMMU group", dev->name);
        return -1;
    }
    buf[n] = 0;
    snprintf(dev->group, sizeof(dev->group), "/dev/vfio/%s",
             strrchr(buf, '/') + 1);
    diag("%s at %s, group %s", dev->name, dev->bdf, dev->group);
    return access(dev->group, F_OK);
}

/*
 * QEMU on the L2 guest @kernel, with @dev passed through if not NULL;
 * with @incoming, to take the VM over from the running QEMU (cprsave
 * transfer) with the same arguments.
 */
static pid_t start_qemu_as(const char *kernel, struct l1_dev *dev, int memfd,
                           int incoming, long memlock_kb)
{
    char vfio[96], machine[QEMU_MACHINE_LEN];
    const char *argv[32];
    int i;

    passed = dev;
    guest_kernel = kernel;
    if (dev) {
        snprintf(vfio, sizeof(vfio), "vfio-pci,host=%s,id=%s0", dev->bdf,
                 dev->name);
    }
    i = qemu_args(argv, machine, memfd, kernel);
    if (dev) {
        argv[i++] = "-device";
        argv[i++] = vfio;
    }
    if (incoming) {
        argv[i++] = "-incoming";
        argv[i++] = "cpr:unix:" CPR_SOCK;
    }
    argv[i] = NULL;
    return spawn_qemu(argv, incoming, memlock_kb);
}

static pid_t start_qemu(const char *kernel, struct l1_dev *dev, int memfd)
{
    return start_qemu_as(kernel, dev, memfd, 0, -1);
}


/* Which processes hold a VFIO file, for the record */
static void show_vfio_holders(void)
{
    char path[600], link[256], comm[64];
    struct dirent *p, *f;
    DIR *proc = opendir("/proc"), *fds;
    ssize_t n;

    while (proc && (p = readdir(proc)) != NULL) {
        if (p->d_name[0] < '0' || p->d_name[0] > '9') {
            continue;
        }
        snprintf(path, sizeof(path), "/proc/%s/fd", p->d_name);
        fds = opendir(path);
        while (fds && (f = readdir(fds)) != NULL) {
            snprintf(path, sizeof(path), "/proc/%s/fd/%s", p->d_name,
                     f->d_name);
            n = readlink(path, link, sizeof(link) - 1);
            if (n > 0) {
                link[n] = 0;
                if (strstr(link, "vfio")) {
                    snprintf(path, sizeof(path), "/proc/%s/comm",
                             p->d_name);
                    if (read_file(path, comm, sizeof(comm)) < 0) {
                        comm[0] = 0;
                    }
                    diag("pid %s (%.*s) fd %s -> %s", p->d_name,
                         (int)strcspn(comm, "\n"), comm, f->d_name, link);
                }
            }
        }
        if (fds) {
            closedir(fds);
        }
    }
    if (proc) {
        closedir(proc);
    }
}

/*
 * After QEMU is gone, L1's kernel may keep the group busy for a while
 * (about 120 ms seen here after a QEMU that went through updates, with no
 * process holding a VFIO file); the next QEMU waits for it.
 */
static void wait_group_free(void)
{
    double deadline = now() + 10;
    int fd;

    if (!passed) {
        return;
    }
    while ((fd = open(passed->group, O_RDWR)) < 0 && errno == EBUSY &&
           now() < deadline) {
        usleep(10000);
    }
    if (fd >= 0) {
        close(fd);
    }
}

/* stop_qemu(), and wait until the device's group is free again */
static void stop_vfio_qemu(void)
{
    stop_qemu();
    wait_group_free();
}

static int read_mailbox(struct mailbox *mb)
{
    return read_mem(mb, sizeof(*mb));
}

/* Wait until the guest has completed @n more rounds; 0 if it did. */
static int wait_rounds(struct mailbox *mb, uint32_t n, double timeout)
{
    struct mailbox cur;
    double deadline = now() + timeout;
    uint32_t start;

    if (read_mailbox(&cur) < 0) {
        return -1;
    }
    start = cur.magic == MAILBOX_MAGIC ? cur.rounds : 0;
    while (cur.magic != MAILBOX_MAGIC || cur.rounds < start + n) {
        if (now() > deadline) {
            diag("guest made no progress: magic %x rounds %u errors %u "
                 "last error %u", cur.magic, cur.rounds, cur.errors,
                 cur.last_error);
            return -1;
        }
        usleep(100000);
        if (read_mailbox(&cur) < 0) {
            return -1;
        }
    }
    *mb = cur;
    return 0;
}

static long vfio_irq_count(const struct l1_dev *dev);

/*
 * The guest's own checks, and every DMA completion interrupt delivered
 * (the last one may still be on its way).
 */
static int mailbox_good(const struct mailbox *mb, uint32_t fact)
{
    if (mb->errors || mb->fact != fact || mb->spurious ||
        mb->dma_irqs + 1 < mb->dma_done) {
        diag("guest: rounds %u errors %u (last %u) fact %u/%u dma %u "
             "irqs %u spurious %u; L1 took %ld", mb->rounds, mb->errors,
             mb->last_error, mb->fact, fact, mb->dma_done, mb->dma_irqs,
             mb->spurious, vfio_irq_count(&edu));
        return 0;
    }
    return 1;
}

/* Interrupts L1's kernel has taken for a passed-through device so far */
static long vfio_irq_count(const struct l1_dev *dev)
{
    static char buf[65536];
    char *line;
    long total = 0;

    if (read_file("/proc/interrupts", buf, sizeof(buf)) < 0) {
        return -1;
    }
    for (line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        if (strstr(line, "vfio-msi") && strstr(line, dev->bdf)) {
            char *p = strchr(line, ':');

            total += p ? atol(p + 1) : 0;
        }
    }
    return total;
}

/*
 * PCI command register of a device as L1 sees it: bus mastering must stay
 * on (a reset clears it)
 */
static int bus_master(const struct l1_dev *dev)
{
    char path[128];
    uint8_t cfg[8];
    int fd;

    snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/config",
             dev->bdf);
    fd = open(path, O_RDONLY);
    if (fd < 0 || pread(fd, cfg, sizeof(cfg), 0) != sizeof(cfg)) {
        return -1;
    }
    close(fd);
    return (cfg[4] & 0x4) != 0;
}

/*
 * cprsave + cprload; the pause in ms from the QMP events, or -1.
 * @raised: interrupts L1 took for edu by the time of cprload, to be
 * delivered to the guest after it; @during: some of them were raised
 * while no QEMU ran the VM (after the guest's state was saved).
 */
static double update(long *raised, int *during)
{
    struct mailbox frozen;

    if (cprsave() < 0) {
        return -1;
    }
    /*
     * The guest's counters as saved; edu's DMA takes 100 ms, so one that
     * was running completes while the new process waits for cprload.
     */
    if (read_mailbox(&frozen) < 0) {
        return -1;
    }
    usleep(300000);
    *raised = vfio_irq_count(&edu);
    *during = *raised > (long)frozen.dma_irqs;
    if (cprload() < 0) {
        return -1;
    }
    return (ev_resume - ev_stop) * 1e3 - 300;
}

/* An update as an operator does it, for the pause: cprload at once. */
static double update_plain(void)
{
    if (cprsave() < 0 || cprload() < 0) {
        return -1;
    }
    return (ev_resume - ev_stop) * 1e3;
}

static void pauses(const char *what)
{
    double p[UPDATES];
    int i;

    for (i = 0; i < UPDATES; i++) {
        p[i] = update_plain();
    }
    diag("pause %s (ms, QMP STOP -> RESUME): %.1f %.1f %.1f", what, p[0],
         p[1], p[2]);
}

/* Locked memory a process is charged with (VmLck), in KiB, or -1 */
static long locked_kb(pid_t pid)
{
    static char buf[4096];
    char path[64], *p;

    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    if (read_file(path, buf, sizeof(buf)) < 0) {
        return -1;
    }
    p = strstr(buf, "VmLck:");
    return p ? atol(p + 6) : -1;
}

/* @who (@pid) is charged with the guest's pinned RAM (VmLck) */
static int charged(pid_t pid, const char *who)
{
    long kb = locked_kb(pid);

    if (kb < 100 * 1024) {
        diag("%s is charged with %ld KiB of locked memory, not the guest's "
             "128 MiB", who, kb);
        return 0;
    }
    return 1;
}

/* transfer_to() a new QEMU started with @memlock_kb, see spawn_qemu() */
static int transfer(long memlock_kb, const char *refused)
{
    return transfer_to(start_qemu_as(guest_kernel, passed, 1, 1, memlock_kb),
                       refused);
}

static void test_updates(const char *irq)
{
    char name[128];
    struct mailbox mb;
    double pause;
    int i, ok, during = 0, irq_ok = 1, d;
    uint32_t fact;
    long raised;

    ok = wait_rounds(&mb, 3, 600) == 0 && mailbox_good(&mb, 120);
    snprintf(name, sizeof(name), "edu DMA and %s work before the update",
             irq);
    result(ok, name);
    if (!ok) {
        show_qemu_log();
        result(0, "updates (not run)");
        result(0, "interrupts during updates (not run)");
        return;
    }
    fact = mb.fact;
    diag("edu %08x at %08x, %u rounds, %u DMA interrupts", mb.edu_id,
         mb.bar0, mb.rounds, mb.dma_irqs);

    for (i = 0; i < UPDATES && ok; i++) {
        pause = update(&raised, &d);
        ok = pause >= 0 && wait_rounds(&mb, 3, 600) == 0 &&
             mailbox_good(&mb, fact) && bus_master(&edu) == 1;
        if (ok && d) {
            during++;
            if (mb.dma_irqs < raised) {
                diag("update %d: L1 took %ld interrupts by cprload, the "
                     "guest got %u", i + 1, raised, mb.dma_irqs);
                irq_ok = 0;
            }
        }
    }
    if (ok) {
        snprintf(name, sizeof(name), "with the VFIO device (%s)", irq);
        pauses(name);
        ok = wait_rounds(&mb, 3, 600) == 0 && mailbox_good(&mb, fact);
    }
    snprintf(name, sizeof(name), "DMA, %s and edu's registers go on across "
             "updates", irq);
    result(ok, name);
    if (!ok) {
        show_qemu_log();
    }
    snprintf(name, sizeof(name), "%s raised while no QEMU ran the VM reach "
             "the guest", irq);
    result(ok && during > 0 && irq_ok, name);
    diag("updates during which edu raised an interrupt: %d of %d", during,
         UPDATES);
}

static void test_exec_fails(void)
{
    struct mailbox mb;
    int ok;

    /* A script whose interpreter is missing: execve itself fails */
    ok = make_not_a_program() &&
         cprsave_refused(", \"binary\": \"" NOT_A_PROGRAM "\"",
                         "cannot execute");
    ok = ok && wait_rounds(&mb, 3, 600) == 0 && mailbox_good(&mb, 120);
    result(ok, "a failed execve gives the old process its DMA mappings back");

    /* The device's own blocker of reboot mode, not the migration one */
    ok = cprsave_mode_refused("reboot", "", "loses its state when the host "
                              "reboots") &&
         wait_rounds(&mb, 3, 600) == 0 && mailbox_good(&mb, 120);
    result(ok, "reboot mode is blocked by the VFIO device, which names "
           "itself and what to do; DMA goes on");
}

static void test_blocked(void)
{
    struct mailbox mb;
    int ok;

    stop_vfio_qemu();
    qemu_pid = start_qemu("/edu-guest.elf", &edu, 0);
    ok = qmp_connect() == 0 && wait_rounds(&mb, 2, 600) == 0 &&
         cprsave_refused("", "blocked by 'pc.ram'") &&
         wait_rounds(&mb, 3, 600) == 0 && mailbox_good(&mb, 120);
    result(ok, "a blocked cprsave leaves the device's DMA alone");
}

/*
 * Transfer mode: new QEMU processes take edu over from the running one;
 * the pinned guest RAM is charged to each in turn.  Then one that may not
 * lock it refuses the VM, and the old process takes its mappings back.
 */
static void test_transfer(void)
{
    struct mailbox mb;
    double p[UPDATES];
    long kb = 0;
    int i, ok = 1;

    for (i = 0; i < UPDATES && ok; i++) {
        ok = transfer(-1, NULL) == 0 && wait_rounds(&mb, 3, 600) == 0 &&
             mailbox_good(&mb, 120) && bus_master(&edu) == 1;
        p[i] = (ev_resume - ev_stop) * 1e3;
        ok = ok && charged(qemu_pid, "the new QEMU");
        kb = locked_kb(qemu_pid);
    }
    if (ok) {
        diag("pause with the VFIO device, transfer mode (ms, QMP STOP -> "
             "RESUME): %.1f %.1f %.1f; new process charged with %ld KiB "
             "locked", p[0], p[1], p[2], kb);
    }
    result(ok, "transfer: new QEMU processes take edu over (DMA mappings, "
           "MSI); DMA and interrupts go on, the QMP client stays connected, "
           "each old process exits");
    ok = ok && transfer(1024, "may not lock that much memory") == 1 &&
         wait_rounds(&mb, 3, 600) == 0 && mailbox_good(&mb, 120) &&
         bus_master(&edu) == 1;
    ok = ok && charged(qemu_pid, "after the refusal, the old QEMU");
    result(ok, "transfer: a new QEMU that may not lock the device's pinned "
           "memory refuses the VM and says why; the old one takes the DMA "
           "mappings back and runs on");

    /* Restart through a relay process: two transfers, the same PID */
    ok = ok && qmp_ok("{\"execute\": \"cprsave\", \"arguments\": "
                      "{\"mode\": \"restart\", \"relay\": true}}") &&
         wait_rounds(&mb, 3, 600) == 0 && mailbox_good(&mb, 120) &&
         bus_master(&edu) == 1 && waitpid(qemu_pid, NULL, WNOHANG) == 0;
    ok = ok && charged(qemu_pid, "after the relay, QEMU");
    result(ok, "restart through a relay: edu goes to a relay process and "
           "back into the same PID; DMA and MSI go on, the pinned memory "
           "is charged to that PID again");
    if (!ok) {
        show_qemu_log();
    }
}

/* The same updates without the VFIO device, for comparison */
static void test_pause_without_vfio(void)
{
    int ok;

    stop_vfio_qemu();
    qemu_pid = start_qemu("/edu-guest.elf", NULL, 1);
    ok = qmp_connect() == 0;
    usleep(2000000);
    if (ok) {
        pauses("without the VFIO device");
    }
    ok = ok && qmp_ok("{\"execute\": \"query-status\"}");
    result(ok, "updates without the VFIO device");
}

/* NVMe (MSI-X): see tests/guest/nvme-guest.c */

static int nvme_good(const struct nvme_mailbox *mb)
{
    if (mb->magic != NVME_MAGIC || mb->errors) {
        diag("guest: magic %x rounds %u errors %u (last %u) irqs %u/%u "
             "completions %u/%u pending %u masked %u; L1 took %ld",
             mb->magic, mb->rounds, mb->errors, mb->last_error, mb->irqs[0],
             mb->irqs[1], mb->completions[0], mb->completions[1],
             mb->pending_ok, mb->masked_ok, vfio_irq_count(&nvme));
        return 0;
    }
    return 1;
}

/*
 * Wait until the guest has done @rounds more rounds and @windows more
 * masked windows of each kind, with no error; 0 if it did.
 */
static int nvme_wait(struct nvme_mailbox *mb, uint32_t rounds,
                     uint32_t windows)
{
    struct nvme_mailbox start = { 0 }, cur;
    double deadline = now() + 300;

    if (read_mem(&cur, sizeof(cur)) < 0) {
        return -1;
    }
    if (cur.magic == NVME_MAGIC) {
        start = cur;
    }
    while (cur.magic != NVME_MAGIC || cur.errors ||
           cur.rounds < start.rounds + rounds ||
           cur.pending_ok < start.pending_ok + windows ||
           cur.masked_ok < start.masked_ok + windows) {
        if (cur.errors || now() > deadline) {
            nvme_good(&cur);
            return -1;
        }
        usleep(100000);
        if (read_mem(&cur, sizeof(cur)) < 0) {
            return -1;
        }
    }
    *mb = cur;
    return 0;
}

/*
 * Update the VM while the guest has vector 1 masked in window @phase;
 * 1 if done (then the window must end well), 0 if no update fell into
 * such a window, -1 on failure.
 */
static int nvme_update_in(uint32_t phase)
{
    struct nvme_mailbox cur, frozen;
    int tries;

    for (tries = 0; tries < 10; tries++) {
        double deadline = now() + 60;

        do {
            if (read_mem(&cur, sizeof(cur)) < 0 || now() > deadline) {
                return -1;
            }
        } while (cur.phase != phase);
        if (cprsave() < 0 || read_mem(&frozen, sizeof(frozen)) < 0 ||
            cprload() < 0) {
            return -1;
        }
        if (frozen.phase == phase) {
            uint32_t before = phase == NVME_PENDING ? frozen.pending_ok :
                              frozen.masked_ok;

            deadline = now() + 60;
            while (read_mem(&cur, sizeof(cur)) == 0 && !cur.errors &&
                   (phase == NVME_PENDING ? cur.pending_ok :
                    cur.masked_ok) == before) {
                if (now() > deadline) {
                    break;
                }
                usleep(100000);
            }
            return nvme_good(&cur) && (phase == NVME_PENDING ?
                                       cur.pending_ok : cur.masked_ok) >
                   before ? 1 : -1;
        }
    }
    diag("no update fell into a masked window in %d tries", tries);
    return 0;
}

static void test_nvme(void)
{
    struct nvme_mailbox mb;
    int i, ok;

    stop_vfio_qemu();
    qemu_pid = start_qemu("/nvme-guest.elf", &nvme, 1);
    ok = qmp_connect() == 0 && nvme_wait(&mb, 50, 1) == 0;
    result(ok, "NVMe DMA, MSI-X on two vectors and masking work before "
           "the update");
    if (!ok) {
        show_qemu_log();
        result(0, "NVMe updates (not run)");
        result(0, "masked MSI-X vector, pending (not run)");
        result(0, "masked MSI-X vector, signalled (not run)");
        result(0, "NVMe transfer (not run)");
        return;
    }
    diag("nvme at %08x: %u rounds, interrupts %u + %u", mb.bar0, mb.rounds,
         mb.irqs[0], mb.irqs[1]);
    for (i = 0; i < UPDATES && ok; i++) {
        ok = cprsave() == 0 && cprload() == 0 && nvme_wait(&mb, 50, 0) == 0 &&
             bus_master(&nvme) == 1;
    }
    if (ok) {
        pauses("with the VFIO device (NVMe, MSI-X)");
        ok = nvme_wait(&mb, 50, 1) == 0;
    }
    result(ok, "NVMe DMA, MSI-X and the controller's registers go on across "
           "updates");
    result(ok && nvme_update_in(NVME_PENDING) == 1, "an interrupt pending on "
           "a masked MSI-X vector at the update is delivered on unmask");
    result(ok && nvme_update_in(NVME_MASKED) == 1, "a vector masked at the "
           "update and signalled after it shows pending, and is delivered "
           "on unmask");
    /*
     * The guest masks and unmasks vectors meanwhile, which maps the PBA in
     * and out of the BAR and so changes the BAR's DMA mapping
     */
    for (i = 0; i < UPDATES && ok; i++) {
        ok = transfer(-1, NULL) == 0 && nvme_wait(&mb, 50, 1) == 0 &&
             bus_master(&nvme) == 1;
    }
    result(ok, "transfer: new QEMU processes take the NVMe controller "
           "over; DMA and MSI-X on both vectors go on");
    if (!ok) {
        show_qemu_log();
    }
}

/* Reboot mode across a restart of L1's kernel */

#define COUNTER_START   (2 << 20)       /* tests/guest/cpr-guest.S */
#define COUNTER_PAGES   1024

/* QEMU on the counting boot-sector guest, plain anonymous RAM */
static pid_t start_counter_guest(int incoming)
{
    const char *argv[] = {
        QEMU, "-L", "/usr/share/qemu", "-machine", "q35", "-accel", "tcg",
        "-m", "128", "-nodefaults", "-display", "none",
        "-drive", "file=/cpr-guest.img,format=raw",
        "-qmp", "unix:" QMP_PATH ",server=on,wait=off",
        incoming ? "-incoming" : NULL, "defer", NULL
    };

    return spawn_qemu(argv, 0, -1);
}

/* The first word of each counted page: @c[COUNTER_PAGES] */
static int read_counters(uint64_t *c)
{
    static char page[4096];
    int fd, i, ok = 1;

    if (!qmp_ok("{\"execute\": \"pmemsave\", \"arguments\": {\"val\": %d,"
                " \"size\": %d, \"filename\": \"/tmp/counters\"}}",
                COUNTER_START, COUNTER_PAGES * 4096)) {
        return -1;
    }
    fd = open("/tmp/counters", O_RDONLY);
    for (i = 0; ok && i < COUNTER_PAGES; i++) {
        ok = read(fd, page, sizeof(page)) == sizeof(page);
        memcpy(&c[i], page, sizeof(c[i]));
    }
    close(fd);
    return ok ? 0 : -1;
}

/* Every counter above zero and within one pass of the others */
static int counters_consistent(const uint64_t *c)
{
    uint64_t lo = c[0], hi = c[0];
    int i;

    for (i = 1; i < COUNTER_PAGES; i++) {
        lo = c[i] < lo ? c[i] : lo;
        hi = c[i] > hi ? c[i] : hi;
    }
    if (!lo || hi - lo > 1) {
        diag("counters from %llu to %llu", (unsigned long long)lo,
             (unsigned long long)hi);
        return 0;
    }
    return 1;
}

static int status_is(const char *want)
{
    char *line = qmp_cmd("{\"execute\": \"query-status\"}");
    int ok = line && strstr(line, want);

    if (!ok) {
        diag("status: %s", line ? line : "(connection lost)");
    }
    free(line);
    return ok;
}

static int reboot_save(const char *dir)
{
    static uint64_t c[COUNTER_PAGES];
    char path[256];
    double deadline = now() + 600;
    int fd, ok;

    qemu_pid = start_counter_guest(0);
    ok = qmp_connect() == 0;
    /* Three passes over RAM: every counter at 3 or more */
    while (ok && read_counters(c) == 0 && c[COUNTER_PAGES - 1] < 3) {
        ok = now() < deadline;
        usleep(200000);
    }
    snprintf(path, sizeof(path), "%s/vm.cpr", dir);
    ok = ok && qmp_ok("{\"execute\": \"cprsave\", \"arguments\":"
                      " {\"file\": \"%s\", \"mode\": \"reboot\"}}", path) &&
         status_is("paused") && read_counters(c) == 0 &&
         counters_consistent(c);
    snprintf(path, sizeof(path), "%s/counters", dir);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ok = ok && fd >= 0 && write(fd, c, sizeof(c)) == sizeof(c) &&
         fsync(fd) == 0;
    close(fd);
    diag("L2 saved at pass %llu, L1 up %.1f s",
         (unsigned long long)c[0], now());
    ok = ok && qmp_ok("{\"execute\": \"quit\"}") &&
         waitpid(qemu_pid, NULL, 0) == qemu_pid;
    qemu_pid = 0;
    result(ok, "L2 saved with cprsave reboot to L1's disk, QEMU quit");
    if (!ok) {
        show_qemu_log();
    }
    return !ok;
}

static int reboot_load(const char *dir)
{
    static uint64_t before[COUNTER_PAGES], after[COUNTER_PAGES];
    char path[256], how[32] = "";
    double deadline = now() + 600;
    int fd, i, ok, behind = 0;

    snprintf(path, sizeof(path), "%s/restart", dir);
    read_file(path, how, sizeof(how));
    diag("L1's kernel restarted (%s); L1 up %.1f s", how, now());
    snprintf(path, sizeof(path), "%s/counters", dir);
    fd = open(path, O_RDONLY);
    ok = fd >= 0 && read(fd, before, sizeof(before)) == sizeof(before);
    close(fd);
    result(ok, "L1 came back with the state file and the counters");

    qemu_pid = start_counter_guest(1);
    snprintf(path, sizeof(path), "%s/vm.cpr", dir);
    ok = ok && qmp_connect() == 0 && status_is("inmigrate") &&
         qmp_ok("{\"execute\": \"cprload\", \"arguments\":"
                " {\"file\": \"%s\"}}", path) && status_is("running");
    result(ok, "a fresh QEMU loads the file with cprload, the VM runs");

    ok = ok && read_counters(after) == 0 && counters_consistent(after);
    for (i = 0; ok && i < COUNTER_PAGES; i++) {
        behind += after[i] < before[i];
    }
    /* and it goes on */
    while (ok && !behind && after[COUNTER_PAGES - 1] <= before[0] + 1 &&
           now() < deadline) {
        usleep(200000);
        ok = read_counters(after) == 0;
    }
    diag("L2 at pass %llu, was %llu before the restart",
         (unsigned long long)after[0], (unsigned long long)before[0]);
    result(ok && !behind && after[COUNTER_PAGES - 1] > before[0] + 1,
           "L2 went on from where it stopped: no counter went back, "
           "none was lost, the guest did not boot again");
    if (!ok) {
        show_qemu_log();
    }
    stop_vfio_qemu();
    return failed;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    qmp_connect_failed = show_vfio_holders;
    if (argc == 3 && !strcmp(argv[1], "reboot-save")) {
        return reboot_save(argv[2]);
    }
    if (argc == 3 && !strcmp(argv[1], "reboot-load")) {
        return reboot_load(argv[2]);
    }
    printf("TAP version 14\n1..16\n");
    if (bind_device(&edu) < 0 || bind_device(&nvme) < 0) {
        result(0, "edu and NVMe bound to vfio-pci");
        return 1;
    }
    result(1, "edu and NVMe bound to vfio-pci");
    qemu_pid = start_qemu("/edu-guest.elf", &edu, 1);
    if (qmp_connect() < 0) {
        result(0, "QEMU starts with edu passed through");
        return 1;
    }
    test_updates("MSI");
    test_exec_fails();
    test_transfer();
    test_blocked();
    test_pause_without_vfio();
    test_nvme();
    stop_vfio_qemu();
    return failed;
}
