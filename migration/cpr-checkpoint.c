/*
 * CPR checkpoint: a reboot-mode state file of a VM that keeps running
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * QMP cpr-checkpoint writes the file cprsave reboot would write, but the
 * VM pauses only while its device and CPU state is taken.  Guest RAM is
 * written afterwards, while the VM runs, and still holds the checkpoint:
 * every page is write-protected with userfaultfd, a page the guest is
 * about to write is saved before the write goes on, and each stretch of
 * RAM is unprotected once it is in the file.
 *
 * Protecting all of guest RAM takes long (tens of milliseconds per GiB
 * of mapped pages), so it is done before the pause, while the VM runs.
 * Until the pause a write fault only records the page as dirty and lets
 * the write go on; during the pause the pages recorded are protected
 * again, and from then on a fault saves the page first.
 *
 * Three threads share the work: the main loop (the command, the pause
 * and the end), the writer (protection, then RAM in order) and the fault
 * thread (reads the userfaultfd).  One lock orders the writer and the
 * fault thread around the page bitmaps and the file, so that a page is
 * written exactly once, with its content of the checkpoint.
 */

#include "qemu/osdep.h"
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <linux/magic.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include "qemu/atomic.h"
#include "qemu/bitmap.h"
#include "qemu/coroutine.h"
#include "qemu/host-utils.h"
#include "qemu/main-loop.h"
#include "qemu/thread.h"
#include "qemu/timer.h"
#include "qemu/units.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-cpr.h"
#include "qapi/qapi-events-cpr.h"
#include "exec/ramblock.h"
#include "exec/ram_addr.h"
#include "migration/blocker.h"
#include "migration/cpr.h"
#include "sysemu/runstate.h"
#include "sysemu/sysemu.h"
#include "cpr-internal.h"
#include "trace.h"

/* Linux 6.4; what older headers lack, the kernel run may have */
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif

#define CPR_CKPT_PAGE 4096
#define CPR_CKPT_CHUNK (4 * MiB)        /* of RAM the writer takes at once */
#define CPR_CKPT_FAULT_CHUNK (256 * KiB) /* saved at once on a fault */
#define CPR_CKPT_ROUNDS 3       /* of re-protecting dirty pages, running */
#define CPR_CKPT_FEW_DIRTY 256  /* pages: few enough to protect paused */

/* A RAM block of the checkpoint */
typedef struct CprCkptBlock {
    RAMBlock *rb;
    uint64_t len;               /* its used length, page aligned */
    uint64_t file_offset;
    unsigned long *dirty;       /* written since protected, before the pause */
    unsigned long *saved;       /* in the file, or nothing more to write */
} CprCkptBlock;

typedef struct CprCkpt {
    char *path;
    char *tmp;                  /* the file until it is complete */
    int fd;
    int direct_fd;              /* the same with O_DIRECT, or -1 */
    int uffd;
    int quit_fd;                /* eventfd: the fault thread ends */
    uint64_t max_bandwidth;     /* bytes per second, 0: no limit */
    Error *blocker;             /* of migration and other saves */
    Notifier exit;

    CprCkptBlock *blocks;
    int nr_blocks;
    GByteArray *envelope;

    QemuMutex lock;             /* bitmaps, saving, the file's pages */
    bool saving;                /* a fault saves the page before the write */
    bool ending;                /* RAM is being unprotected and unregistered */
    CprCkptBlock *flight;       /* the writer writes it from flight_start */
    uint64_t flight_start;      /* to flight_end, or NULL */
    uint64_t flight_end;
    QemuThread writer;
    QemuThread faults;
    QemuSemaphore paused;       /* the writer waits for the pause */
    Coroutine *co;              /* the command, until the pause or the end */
    bool running;               /* the writer thread was started */
    bool checkpointed;          /* the pause fixed the checkpoint */

    Error *err;                 /* the first failure (under lock) */
    bool cancel;
    uint64_t bytes;             /* written into the file */
    uint64_t ram_done;
    uint64_t ram_total;
    uint64_t dirty_at_pause;
    int64_t start_ns;
    int64_t end_ns;
    int64_t pause_ns;
    CprCheckpointStatus status;
} CprCkpt;

/* The checkpoint being written, or the last one */
static CprCkpt *cpr_ckpt;

/* What this kernel's userfaultfd offers: features, or -errno */
static int64_t cpr_ckpt_uffd_features(void)
{
    static int64_t features = 1;
    struct uffdio_api api = { .api = UFFD_API };
    int fd;

    if (features <= 0) {
        return features;
    }
    fd = syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        return features = -errno;
    }
    features = ioctl(fd, UFFDIO_API, &api) < 0 ? -errno : api.features;
    close(fd);
    return features;
}

static bool cpr_ckpt_on_shmem(RAMBlock *rb)
{
    struct statfs sfs;

    return rb->fd >= 0 && qemu_ram_is_shared(rb) &&
           fstatfs(rb->fd, &sfs) == 0 && sfs.f_type == TMPFS_MAGIC;
}

static int cpr_ckpt_ram_blocker(RAMBlock *rb, void *opaque)
{
    CprBlockerList ***tail = opaque;
    int64_t features = cpr_ckpt_uffd_features();

    if (!qemu_ram_is_migratable(rb) || features < 0) {
        return 0;
    }
    if (rb->page_size != qemu_real_host_page_size()) {
        cpr_add_blocker(tail, CPR_MODE_CHECKPOINT, rb->idstr,
                        "guest RAM on huge pages cannot be checkpointed yet");
    } else if (cpr_ckpt_on_shmem(rb)) {
        if (!(features & UFFD_FEATURE_WP_HUGETLBFS_SHMEM)) {
            cpr_add_blocker(tail, CPR_MODE_CHECKPOINT, rb->idstr,
                            "this kernel cannot write-protect shared memory "
                            "with userfaultfd (that needs Linux 5.19)");
        }
    } else if (rb->fd >= 0 && qemu_ram_is_shared(rb)) {
        cpr_add_blocker(tail, CPR_MODE_CHECKPOINT, rb->idstr,
                        "guest RAM is a shared file on a disk file system, "
                        "which userfaultfd cannot write-protect; use "
                        "memory-backend-memfd");
    } else if (!(features & UFFD_FEATURE_WP_UNPOPULATED)) {
        cpr_add_blocker(tail, CPR_MODE_CHECKPOINT, rb->idstr,
                        "this kernel cannot write-protect pages of private "
                        "memory that were never touched (that needs Linux "
                        "6.4); start QEMU with -machine memfd-alloc=on or "
                        "use memory-backend-memfd");
    }
    return 0;
}

static void cpr_ckpt_blockers(CprBlockerList ***tail)
{
    int64_t features = cpr_ckpt_uffd_features();

    if (qemu_real_host_page_size() != CPR_CKPT_PAGE) {
        cpr_add_blocker(tail, CPR_MODE_CHECKPOINT, "page-size",
                        "checkpoints need a host with 4 KiB pages");
        return;
    }
    if (features < 0) {
        cpr_add_blocker(tail, CPR_MODE_CHECKPOINT, "userfaultfd",
                        "userfaultfd is not available: %s (it needs "
                        "CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1)",
                        strerror(-features));
    } else if (!(features & UFFD_FEATURE_PAGEFAULT_FLAG_WP)) {
        cpr_add_blocker(tail, CPR_MODE_CHECKPOINT, "userfaultfd",
                        "this kernel has no userfaultfd write-protection");
    }
    qemu_ram_foreach_block(cpr_ckpt_ram_blocker, tail);
}

static bool cpr_ckpt_active(void)
{
    return cpr_ckpt && cpr_ckpt->status == CPR_CHECKPOINT_STATUS_ACTIVE;
}

/* Record the first failure; the writer stops at its next step */
static void cpr_ckpt_fail(CprCkpt *c, int err, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);
static void cpr_ckpt_fail(CprCkpt *c, int err, const char *fmt, ...)
{
    g_autofree char *msg = NULL;
    va_list ap;

    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    if (!c->err) {
        error_setg_errno(&c->err, err, "%s", msg);
    }
    qatomic_set(&c->cancel, true);
}

static int cpr_ckpt_protect(CprCkpt *c, uint8_t *host, uint64_t len, bool wp)
{
    struct uffdio_writeprotect w = {
        .range = { .start = (uintptr_t)host, .len = len },
        .mode = wp ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
    };

    while (ioctl(c->uffd, UFFDIO_WRITEPROTECT, &w) < 0) {
        if (errno != EAGAIN && errno != EINTR) {
            return -errno;
        }
    }
    return 0;
}

/* Protect the pages marked dirty again, clear the marks; under lock */
static int cpr_ckpt_protect_dirty(CprCkpt *c, uint64_t *count)
{
    int i, ret;

    for (i = 0; i < c->nr_blocks; i++) {
        CprCkptBlock *b = &c->blocks[i];
        unsigned long n = b->len / CPR_CKPT_PAGE, p = 0, q;

        while ((p = find_next_bit(b->dirty, n, p)) < n) {
            q = find_next_zero_bit(b->dirty, n, p);
            bitmap_clear(b->dirty, p, q - p);
            ret = cpr_ckpt_protect(c, b->rb->host + p * CPR_CKPT_PAGE,
                                   (q - p) * CPR_CKPT_PAGE, true);
            if (ret < 0) {
                return ret;
            }
            *count += q - p;
            p = q;
        }
    }
    return 0;
}

static CprCkptBlock *cpr_ckpt_block_at(CprCkpt *c, uint64_t addr,
                                       uint64_t *page)
{
    int i;

    for (i = 0; i < c->nr_blocks; i++) {
        CprCkptBlock *b = &c->blocks[i];
        uintptr_t host = (uintptr_t)b->rb->host;

        if (addr >= host && addr < host + b->len) {
            *page = (addr - host) / CPR_CKPT_PAGE;
            return b;
        }
    }
    return NULL;
}

/*
 * A write to a protected page: note it (before the pause), or save the
 * stretch of CPR_CKPT_FAULT_CHUNK around it first (the guest is likely to
 * write its neighbours next: one fault for them all); let it go on
 */
static void cpr_ckpt_fault(CprCkpt *c, uint64_t addr)
{
    CprCkptBlock *b;
    uint64_t page, start, end, bytes = 0;
    int ret;

    QEMU_LOCK_GUARD(&c->lock);
    b = cpr_ckpt_block_at(c, addr, &page);
    if (!b || c->ending) {
        /* Unprotecting and unregistering wakes it */
        return;
    }
    trace_cpr_checkpoint_fault(b->rb->idstr, page * CPR_CKPT_PAGE, c->saving);
    start = page * CPR_CKPT_PAGE;
    end = start + CPR_CKPT_PAGE;
    if (c->saving) {
        start = QEMU_ALIGN_DOWN(start, CPR_CKPT_FAULT_CHUNK);
        end = MIN(start + CPR_CKPT_FAULT_CHUNK, b->len);
    }
    if (b == c->flight && start < c->flight_end && end > c->flight_start) {
        return;     /* the writer's unprotect lets it go on */
    }
    if (!c->saving) {
        set_bit(page, b->dirty);
    } else if (!qatomic_read(&c->cancel)) {
        /* Through the page cache: the vCPU waits for this write */
        ret = cpr_reboot_write_range(c->fd, -1, b->rb, start, end,
                                     b->file_offset, b->saved, &bytes);
        qatomic_add(&c->bytes, bytes);
        if (ret < 0) {
            cpr_ckpt_fail(c, -ret, "cannot write guest RAM into '%s'",
                          c->tmp);
        }
        bitmap_set(b->saved, start / CPR_CKPT_PAGE,
                   (end - start) / CPR_CKPT_PAGE);
    }
    ret = cpr_ckpt_protect(c, b->rb->host + start, end - start, false);
    if (ret < 0) {
        /* The writing thread would wait for ever: nothing can go on */
        error_report("cpr-checkpoint: cannot let a write of guest RAM go "
                     "on: %s", strerror(-ret));
        abort();
    }
}

static void *cpr_ckpt_fault_thread(void *opaque)
{
    CprCkpt *c = opaque;
    struct pollfd pfd[2] = {
        { .fd = c->uffd, .events = POLLIN },
        { .fd = c->quit_fd, .events = POLLIN },
    };
    struct uffd_msg msg[16];
    ssize_t n;
    int i;

    for (;;) {
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            error_report("cpr-checkpoint: poll: %s", strerror(errno));
            abort();
        }
        if (pfd[1].revents) {
            return NULL;
        }
        n = read(c->uffd, msg, sizeof(msg));
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                continue;
            }
            error_report("cpr-checkpoint: reading userfaultfd: %s",
                         strerror(errno));
            abort();
        }
        for (i = 0; i < n / sizeof(msg[0]); i++) {
            if (msg[i].event == UFFD_EVENT_PAGEFAULT) {
                cpr_ckpt_fault(c, msg[i].arg.pagefault.address);
            }
        }
    }
}

/* Before the pause, while the VM runs: protect all of guest RAM */
static bool cpr_ckpt_protect_all(CprCkpt *c)
{
    uint64_t count = 0;
    int i, round, ret = 0;
    int64_t t = get_clock();

    for (i = 0; i < c->nr_blocks; i++) {
        ret = cpr_ckpt_protect(c, c->blocks[i].rb->host, c->blocks[i].len,
                               true);
        if (ret < 0) {
            goto fail;
        }
    }
    /* Pages written meanwhile: again, until few are left for the pause */
    for (round = 0; round < CPR_CKPT_ROUNDS; round++) {
        count = 0;
        WITH_QEMU_LOCK_GUARD(&c->lock) {
            ret = cpr_ckpt_protect_dirty(c, &count);
        }
        if (ret < 0) {
            goto fail;
        }
        if (count < CPR_CKPT_FEW_DIRTY) {
            break;
        }
    }
    trace_cpr_checkpoint_protected((get_clock() - t) / SCALE_US, count);
    return true;

fail:
    WITH_QEMU_LOCK_GUARD(&c->lock) {
        cpr_ckpt_fail(c, -ret, "cannot write-protect guest RAM");
    }
    return false;
}

/* Sleep as long as the bandwidth limit asks, or until cancelled */
static void cpr_ckpt_throttle(CprCkpt *c, int64_t start)
{
    int64_t due;

    if (!c->max_bandwidth) {
        return;
    }
    due = start + muldiv64(qatomic_read(&c->bytes), NANOSECONDS_PER_SECOND,
                           c->max_bandwidth);
    while (get_clock() < due && !qatomic_read(&c->cancel)) {
        g_usleep(MIN((due - get_clock()) / SCALE_US + 1, 10 * 1000));
    }
}

/* After the pause: the envelope, then guest RAM in order */
static void cpr_ckpt_write_all(CprCkpt *c)
{
    int64_t start = get_clock();
    uint64_t bytes;
    int i, ret = 0;

    if (!cpr_file_pwrite(c->fd, c->envelope->data, c->envelope->len, 0)) {
        ret = -errno;
        goto fail;
    }
    for (i = 0; i < c->nr_blocks; i++) {
        CprCkptBlock *b = &c->blocks[i];
        uint64_t off, end;

        for (off = 0; off < b->len; off = end) {
            end = MIN(off + CPR_CKPT_CHUNK, b->len);
            if (qatomic_read(&c->cancel)) {
                return;
            }
            /*
             * In flight: a fault on these pages waits for the unprotect
             * below, which wakes it; the pages stay as they are meanwhile
             */
            WITH_QEMU_LOCK_GUARD(&c->lock) {
                c->flight = b;
                c->flight_start = off;
                c->flight_end = end;
            }
            bytes = 0;
            ret = cpr_reboot_write_range(c->fd, c->direct_fd, b->rb, off, end,
                                         b->file_offset, b->saved, &bytes);
            qatomic_add(&c->bytes, bytes);
            WITH_QEMU_LOCK_GUARD(&c->lock) {
                bitmap_set(b->saved, off / CPR_CKPT_PAGE,
                           (end - off) / CPR_CKPT_PAGE);
                c->flight = NULL;
                if (ret == 0) {
                    ret = cpr_ckpt_protect(c, b->rb->host + off, end - off,
                                           false);
                }
            }
            if (ret < 0) {
                goto fail;
            }
            qatomic_add(&c->ram_done, end - off);
            cpr_ckpt_throttle(c, start);
        }
    }
    if (fdatasync(c->fd) < 0) {
        ret = -errno;
        goto fail;
    }
    return;

fail:
    WITH_QEMU_LOCK_GUARD(&c->lock) {
        cpr_ckpt_fail(c, -ret, "cannot write '%s'", c->tmp);
    }
}

static void cpr_ckpt_pause_bh(void *opaque);
static void cpr_ckpt_end_bh(void *opaque);

static void *cpr_ckpt_writer_thread(void *opaque)
{
    CprCkpt *c = opaque;
    uint64_t eventfd_one = 1;
    int i;

    if (cpr_ckpt_protect_all(c)) {
        aio_bh_schedule_oneshot(iohandler_get_aio_context(),
                                cpr_ckpt_pause_bh, c);
        qemu_sem_wait(&c->paused);
        if (c->checkpointed) {
            cpr_ckpt_write_all(c);
        }
    }
    /*
     * Nothing stays protected (unregistering would unprotect, but late);
     * a fault read meanwhile is left alone: this wakes its thread
     */
    WITH_QEMU_LOCK_GUARD(&c->lock) {
        c->ending = true;
    }
    for (i = 0; i < c->nr_blocks; i++) {
        struct uffdio_range r = {
            .start = (uintptr_t)c->blocks[i].rb->host,
            .len = c->blocks[i].len,
        };

        cpr_ckpt_protect(c, c->blocks[i].rb->host, c->blocks[i].len, false);
        ioctl(c->uffd, UFFDIO_UNREGISTER, &r);
    }
    while (write(c->quit_fd, &eventfd_one, sizeof(eventfd_one)) < 0 &&
           errno == EINTR) {
        /* again */
    }
    aio_bh_schedule_oneshot(iohandler_get_aio_context(), cpr_ckpt_end_bh, c);
    return NULL;
}

/* The RAM blocks of @cf are those registered, with the same sizes */
static bool cpr_ckpt_same_ram(CprCkpt *c, CprFile *cf)
{
    int i;

    if (cf->nr_ram != c->nr_blocks) {
        return false;
    }
    for (i = 0; i < cf->nr_ram; i++) {
        if (strcmp(cf->ram[i].idstr, c->blocks[i].rb->idstr) ||
            ROUND_UP(cf->ram[i].used_length, CPR_CKPT_PAGE) !=
            c->blocks[i].len) {
            return false;
        }
    }
    return true;
}

/* In the main loop: the VM pauses while its state is taken */
static void cpr_ckpt_pause_bh(void *opaque)
{
    CprCkpt *c = opaque;
    g_autoptr(CprFile) cf = NULL;
    g_autoptr(GByteArray) devices = NULL;
    bool was_running = runstate_is_running();
    Error *err = NULL;
    int64_t t = get_clock();
    int i, ret = 0;

    if (!cpr_stop(RUN_STATE_SAVE_VM, &err)) {
        goto resume;
    }
    cf = cpr_file_new(CPR_MODE_REBOOT);
    if (!cpr_ckpt_same_ram(c, cf)) {
        error_setg(&err, "guest RAM changed while it was being protected");
        goto resume;
    }
    cpr_set_saving(true);
    devices = cpr_save_devices(&err);
    cpr_set_saving(false);
    if (!devices) {
        goto resume;
    }
    cpr_reboot_layout_copy(cf, cpr_file_envelope_size(cf, devices->len));
    cpr_reboot_layout_copy(cf, cpr_file_envelope_size(cf, devices->len));
    c->envelope = cpr_file_envelope(cf, devices);
    if (ftruncate(c->fd, cf->file_size) < 0) {
        error_setg_errno(&err, errno, "cannot size '%s'", c->tmp);
        goto resume;
    }
    WITH_QEMU_LOCK_GUARD(&c->lock) {
        for (i = 0; i < c->nr_blocks; i++) {
            c->blocks[i].file_offset = cf->ram[i].file_offset;
        }
        ret = cpr_ckpt_protect_dirty(c, &c->dirty_at_pause);
        if (ret < 0) {
            error_setg_errno(&err, -ret, "cannot write-protect guest RAM");
        } else {
            c->saving = true;
            c->checkpointed = true;
        }
    }

resume:
    if (was_running && !runstate_is_running()) {
        vm_start();
    }
    c->pause_ns = get_clock() - t;
    if (err) {
        WITH_QEMU_LOCK_GUARD(&c->lock) {
            error_propagate(&c->err, err);
            qatomic_set(&c->cancel, true);
        }
    } else {
        trace_cpr_checkpoint_paused(c->pause_ns / SCALE_US,
                                    c->dirty_at_pause);
        cpr_step("checkpoint-paused");
    }
    qemu_sem_post(&c->paused);
    if (c->checkpointed) {
        /* The command returns; the end is an event */
        aio_co_wake(g_steal_pointer(&c->co));
    }
}

static void cpr_ckpt_release(CprCkpt *c)
{
    int i;

    for (i = 0; i < c->nr_blocks; i++) {
        if (c->blocks[i].rb) {
            memory_region_unref(c->blocks[i].rb->mr);
        }
        g_free(c->blocks[i].dirty);
        g_free(c->blocks[i].saved);
    }
    g_clear_pointer(&c->blocks, g_free);
    c->nr_blocks = 0;
    g_clear_pointer(&c->envelope, g_byte_array_unref);
    if (c->uffd >= 0) {
        close(c->uffd);
        c->uffd = -1;
    }
    if (c->direct_fd >= 0) {
        close(c->direct_fd);
        c->direct_fd = -1;
    }
    if (c->quit_fd >= 0) {
        close(c->quit_fd);
        c->quit_fd = -1;
    }
    if (c->blocker) {
        migrate_del_blocker(c->blocker);
        g_clear_pointer(&c->blocker, error_free);
        ram_block_discard_disable(false);
    }
    if (c->exit.notify) {
        qemu_remove_exit_notifier(&c->exit);
        c->exit.notify = NULL;
    }
    qemu_mutex_destroy(&c->lock);
    qemu_sem_destroy(&c->paused);
}

/* In the main loop, once the writer is done: the file goes into place */
static void cpr_ckpt_end_bh(void *opaque)
{
    CprCkpt *c = opaque;
    Error *err = NULL;

    qemu_thread_join(&c->writer);
    qemu_thread_join(&c->faults);
    if (!c->err && !c->cancel &&
        cpr_file_commit(c->fd, c->tmp, c->path, true, &err)) {
        c->status = CPR_CHECKPOINT_STATUS_COMPLETED;
    } else {
        if (c->err || c->cancel) {
            cpr_file_discard(c->fd, c->tmp);
        }
        c->status = c->err || err ? CPR_CHECKPOINT_STATUS_FAILED :
                    CPR_CHECKPOINT_STATUS_CANCELLED;
        if (err) {
            error_propagate(&c->err, err);
        }
        if (c->err) {
            error_prepend(&c->err, "cpr-checkpoint: ");
        }
    }
    c->fd = -1;
    c->end_ns = get_clock();
    cpr_ckpt_release(c);
    trace_cpr_checkpoint_end(c->path, CprCheckpointStatus_str(c->status),
                             c->bytes, (c->end_ns - c->start_ns) / SCALE_MS);
    if (c->co) {
        /* It failed before the checkpoint: the command says why */
        aio_co_wake(g_steal_pointer(&c->co));
        return;
    }
    qapi_event_send_cpr_checkpoint_completed(c->path, c->status, c->bytes,
                                             (c->end_ns - c->start_ns) /
                                             SCALE_MS, !!c->err,
                                             c->err ?
                                             error_get_pretty(c->err) : NULL);
}

/* QEMU exits while the file is written: leave no part of it behind */
static void cpr_ckpt_exit(Notifier *n, void *data)
{
    CprCkpt *c = container_of(n, CprCkpt, exit);

    qatomic_set(&c->cancel, true);
    unlink(c->tmp);
}

static void cpr_ckpt_free(CprCkpt *c)
{
    if (c) {
        error_free(c->err);
        g_free(c->path);
        g_free(c->tmp);
        g_free(c);
    }
}

/* Register guest RAM with a new userfaultfd; the blocks in @cf's order */
static bool cpr_ckpt_register(CprCkpt *c, CprFile *cf, Error **errp)
{
    struct uffdio_api api = { .api = UFFD_API };
    int64_t features = cpr_ckpt_uffd_features();
    int i;

    c->uffd = syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (c->uffd < 0) {
        error_setg_errno(errp, errno, "cannot open a userfaultfd");
        return false;
    }
    api.features = features & (UFFD_FEATURE_WP_HUGETLBFS_SHMEM |
                               UFFD_FEATURE_WP_UNPOPULATED);
    if (ioctl(c->uffd, UFFDIO_API, &api) < 0) {
        error_setg_errno(errp, errno, "cannot set up the userfaultfd");
        return false;
    }
    c->nr_blocks = cf->nr_ram;
    c->blocks = g_new0(CprCkptBlock, cf->nr_ram);
    for (i = 0; i < cf->nr_ram; i++) {
        CprCkptBlock *b = &c->blocks[i];
        struct uffdio_register r = { .mode = UFFDIO_REGISTER_MODE_WP };

        b->rb = qemu_ram_block_by_name(cf->ram[i].idstr);
        /* Not freed under the threads by an unplug meanwhile */
        memory_region_ref(b->rb->mr);
        b->len = ROUND_UP(b->rb->used_length, CPR_CKPT_PAGE);
        b->dirty = bitmap_new(b->len / CPR_CKPT_PAGE);
        b->saved = bitmap_new(b->len / CPR_CKPT_PAGE);
        c->ram_total += b->len;
        r.range.start = (uintptr_t)b->rb->host;
        r.range.len = b->len;
        if (ioctl(c->uffd, UFFDIO_REGISTER, &r) < 0) {
            error_setg_errno(errp, errno, "cannot register RAM block '%s' "
                             "for write protection", b->rb->idstr);
            return false;
        }
        if (!(r.ioctls & (1ULL << _UFFDIO_WRITEPROTECT))) {
            error_setg(errp, "RAM block '%s' cannot be write-protected",
                       b->rb->idstr);
            return false;
        }
    }
    return true;
}

void coroutine_fn qmp_cpr_checkpoint(const char *file,
                                     bool has_max_bandwidth,
                                     uint64_t max_bandwidth, Error **errp)
{
    ERRP_GUARD();
    g_autoptr(CprFile) cf = NULL;
    CprCkpt *c;

    if (cpr_ckpt_active()) {
        error_setg(errp, "a checkpoint is being written to '%s'",
                   cpr_ckpt->path);
        return;
    }
    if (!qemu_in_coroutine()) {
        error_setg(errp, "cpr-checkpoint is available over QMP only");
        return;
    }
    if (!cpr_mode_allowed(CPR_MODE_CHECKPOINT, errp)) {
        error_prepend(errp, "cpr-checkpoint: ");
        return;
    }
    c = g_new0(CprCkpt, 1);
    c->path = g_strdup(file);
    c->fd = c->direct_fd = c->uffd = c->quit_fd = -1;
    c->max_bandwidth = has_max_bandwidth ? max_bandwidth : 0;
    c->start_ns = get_clock();
    c->status = CPR_CHECKPOINT_STATUS_ACTIVE;
    qemu_mutex_init(&c->lock);
    qemu_sem_init(&c->paused, 0);

    if (ram_block_discard_disable(true)) {
        error_setg(errp, "cpr-checkpoint: guest RAM may be discarded "
                   "(virtio-mem, or a device that needs it)");
        goto fail;
    }
    error_setg(&c->blocker, "a checkpoint is being written to '%s'", file);
    if (migrate_add_blocker(c->blocker, errp) < 0) {
        g_clear_pointer(&c->blocker, error_free);
        ram_block_discard_disable(false);
        goto fail;
    }
    cf = cpr_file_new(CPR_MODE_REBOOT);
    if (!cpr_ckpt_register(c, cf, errp)) {
        goto fail;
    }
    c->quit_fd = eventfd(0, EFD_CLOEXEC);
    if (c->quit_fd < 0) {
        error_setg_errno(errp, errno, "cannot create an eventfd");
        goto fail;
    }
    c->fd = cpr_file_create(file, &c->tmp, errp);
    if (c->fd < 0) {
        goto fail;
    }
    /* Less of the host's CPU than the page cache; not on every file system */
    c->direct_fd = open(c->tmp, O_WRONLY | O_DIRECT | O_CLOEXEC);
    c->exit.notify = cpr_ckpt_exit;
    qemu_add_exit_notifier(&c->exit);

    cpr_ckpt_free(cpr_ckpt);
    cpr_ckpt = c;
    trace_cpr_checkpoint_start(file, c->ram_total);
    c->co = qemu_coroutine_self();
    qemu_thread_create(&c->faults, "cpr-ckpt-fault", cpr_ckpt_fault_thread,
                       c, QEMU_THREAD_JOINABLE);
    qemu_thread_create(&c->writer, "cpr-ckpt-write", cpr_ckpt_writer_thread,
                       c, QEMU_THREAD_JOINABLE);
    qemu_coroutine_yield();
    if (!c->checkpointed) {
        error_propagate(errp, error_copy(c->err));
    }
    return;

fail:
    if (c->fd >= 0) {
        cpr_file_discard(c->fd, c->tmp);
    }
    cpr_ckpt_release(c);
    cpr_ckpt_free(c);
    error_prepend(errp, "cpr-checkpoint: ");
}

void qmp_cpr_checkpoint_cancel(Error **errp)
{
    if (!cpr_ckpt_active()) {
        error_setg(errp, "no checkpoint is being written");
        return;
    }
    qatomic_set(&cpr_ckpt->cancel, true);
}

CprCheckpointInfo *cpr_checkpoint_info(void)
{
    CprCkpt *c = cpr_ckpt;
    CprCheckpointInfo *info;
    int64_t end;

    if (!c) {
        return NULL;
    }
    end = c->status == CPR_CHECKPOINT_STATUS_ACTIVE ? get_clock() : c->end_ns;
    info = g_new0(CprCheckpointInfo, 1);
    info->file = g_strdup(c->path);
    info->status = c->status;
    info->ram_total = c->ram_total;
    info->ram_done = qatomic_read(&c->ram_done);
    info->bytes = qatomic_read(&c->bytes);
    info->pause_us = c->pause_ns / SCALE_US;
    info->duration_ms = (end - c->start_ns) / SCALE_MS;
    if (c->status != CPR_CHECKPOINT_STATUS_ACTIVE && c->err) {
        info->has_error = true;
        info->error = g_strdup(error_get_pretty(c->err));
    }
    return info;
}

const CprModeOps cpr_checkpoint_ops = {
    .mode = CPR_MODE_CHECKPOINT,
    .blockers = cpr_ckpt_blockers,
    .other_mode_hint = "; a checkpoint is loaded as a reboot-mode file",
};
