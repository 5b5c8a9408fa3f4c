/*
 * CPR: guest RAM moved from anonymous memory into memfds while the VM runs
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Restart and transfer mode keep guest RAM by handing its descriptors
 * over, which anonymous memory has not: execve discards it, and no other
 * process can map it.  A VM started without memfd-alloc (plain -m, a
 * memory-backend-ram, firmware and option ROMs) has its RAM blocks moved
 * into memfds by cprsave first:
 *
 * - each block gets a memfd before the mode's preparation (transfer mode
 *   passes the memfds on then);
 * - while the VM runs, a thread copies every block into its memfd: the
 *   pages that are not zero in a first pass (pwrite: a full memfd is an
 *   error, not a SIGBUS), then the pages the guest dirtied since the pass
 *   before (QEMU's migration dirty log, KVM's included; memcpy into a
 *   mapping of the memfd where the page is there already), until few are
 *   left.  A guest that dirties pages faster than they are copied has its
 *   vCPUs throttled as migration's auto-converge does, more after each
 *   pass that does not halve the dirty pages (up to 90%), until the VM
 *   stops;
 * - once cprsave has stopped the VM, the last dirty pages are copied and
 *   each block's anonymous memory is moved aside (mremap moves page
 *   tables, not pages) and its memfd mapped at the same host address:
 *   nothing that holds the address (KVM's memory slots, vhost, TCG) has
 *   to change.  The old pages are not unmapped in the pause: the process
 *   that holds the old address space frees them after execve, our exit
 *   after a transfer, and a thread if the VM resumes here.
 *
 * From then on the blocks are memfd RAM like memfd-alloc's, also when
 * cprsave fails later and the VM resumes in this process.  If the move
 * itself fails, nothing changed: the VM runs on its anonymous memory.
 * While it runs, guest RAM takes twice its size at most (the memfd copy
 * of every page the guest has touched).
 */

#include "qemu/osdep.h"
#include "qemu/madvise.h"
#include "qemu/memfd.h"
#include "qemu/main-loop.h"
#include "qemu/coroutine.h"
#include "qemu/cutils.h"
#include "qemu/thread.h"
#include "qemu/timer.h"
#include "qemu/units.h"
#include "qapi/error.h"
#include "exec/ramblock.h"
#include "exec/ram_addr.h"
#include "hw/boards.h"
#include "sysemu/cpu-throttle.h"
#include "sysemu/hostmem.h"
#include "migration/blocker.h"
#include "block/aio.h"
#include "migration/cpr.h"
#include "cpr-internal.h"
#include "trace.h"

/* A pass that finds this few dirty pages is the last one with the VM up */
#define CPR_RAM_MOVE_LAST_PAGES 1024
#define CPR_RAM_MOVE_MAX_PASSES 20
/*
 * vCPU throttling (percent) of a guest that dirties pages too fast.  A
 * throttled vCPU sleeps up to 100 - pct timeslices (of 10 ms) without
 * handling the barrier each pass waits for under TCG: 90% bounds it.
 */
#define CPR_RAM_MOVE_THROTTLE_FIRST 30
#define CPR_RAM_MOVE_THROTTLE_STEP 20
#define CPR_RAM_MOVE_THROTTLE_MAX 90
/* Memory left free beyond the copy */
#define CPR_RAM_MOVE_SPARE (256 * MiB)

typedef struct CprRamMoveBlock {
    RAMBlock *rb;
    int fd;                         /* the memfd */
    uint8_t *map;                   /* the memfd, mapped */
    unsigned long *present;         /* pages the memfd has */
    uint64_t length;                /* used length at the last snapshot */
    DirtyBitmapSnapshot *dirty;     /* pages to copy in this pass */
} CprRamMoveBlock;

typedef struct CprRamMove {
    GArray *blocks;                 /* of CprRamMoveBlock */
    Error *blocker;                 /* of migration, snapshots, savevm */
    QemuThread thread;
    Coroutine *co;                  /* cprsave, waiting for the thread */
    Error *err;                     /* the thread's */
    uint64_t pages;                 /* copied in the last pass */
    unsigned passes;
} CprRamMove;

static CprRamMove *cpr_ram_move;

/* A block restart and transfer mode cannot hand over as it is */
static bool cpr_ram_movable(RAMBlock *rb)
{
    return qemu_ram_is_migratable(rb) && rb->fd < 0 && rb->host &&
           !(rb->flags & RAM_PREALLOC);
}

static int cpr_ram_move_count(RAMBlock *rb, void *opaque)
{
    *(unsigned *)opaque += cpr_ram_movable(rb);
    return 0;
}

bool cpr_ram_move_needed(void)
{
    unsigned n = 0;

    qemu_ram_foreach_block(cpr_ram_move_count, &n);
    return n > 0;
}

bool cpr_ram_move_active(void)
{
    return cpr_ram_move != NULL;
}

int cpr_ram_move_fd(RAMBlock *rb)
{
    guint i;

    for (i = 0; cpr_ram_move && i < cpr_ram_move->blocks->len; i++) {
        CprRamMoveBlock *b = &g_array_index(cpr_ram_move->blocks,
                                            CprRamMoveBlock, i);
        if (b->rb == rb) {
            return b->fd;
        }
    }
    return -1;
}

/* With the BQL: take and clear the pages each block's guest dirtied */
static void cpr_ram_move_snapshot(CprRamMove *m)
{
    guint i;

    memory_global_dirty_log_sync();
    for (i = 0; i < m->blocks->len; i++) {
        CprRamMoveBlock *b = &g_array_index(m->blocks, CprRamMoveBlock, i);

        g_free(b->dirty);
        b->length = b->rb->used_length;
        b->dirty = cpu_physical_memory_snapshot_and_clear_dirty(
            b->rb->mr, 0, b->length, DIRTY_MEMORY_MIGRATION);
    }
    /*
     * TCG: a store that marked its page dirty before the clear may have
     * put the page back on its fast path; let every vCPU's TLB see the
     * clear before the copy, as migration does
     */
    memory_global_after_dirty_log_sync();
}

/*
 * Copy pages [@first, @end) of @b into its memfd: into the mapping where
 * the memfd has them (@present), else with pwrite, which fails cleanly
 * when there is no memory for them
 */
static bool cpr_ram_move_write(CprRamMoveBlock *b, uint64_t first,
                               uint64_t end, bool present, Error **errp)
{
    uint64_t off = first << TARGET_PAGE_BITS, stop = end << TARGET_PAGE_BITS;

    if (present) {
        memcpy(b->map + off, b->rb->host + off, stop - off);
        return true;
    }
    bitmap_set(b->present, first, end - first);
    while (off < stop) {
        ssize_t n = pwrite(b->fd, b->rb->host + off, stop - off, off);

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            error_setg_errno(errp, n < 0 ? errno : ENOSPC,
                             "cannot copy guest RAM block '%s' into a memfd",
                             b->rb->idstr);
            return false;
        }
        off += n;
    }
    return true;
}

/*
 * Copy the pages of @b that are not zero (@all: the memfd is empty) or
 * that its snapshot has dirty, in runs; the number of pages copied
 */
static bool cpr_ram_move_copy(CprRamMoveBlock *b, bool all, uint64_t *pages,
                              Error **errp)
{
    uint64_t npages = b->length >> TARGET_PAGE_BITS;
    uint64_t page, run = 0;
    /* The run of pages to copy: none, into the mapping, with pwrite */
    enum { NONE, MAPPED, WRITTEN } kind = NONE, now;

    for (page = 0; page <= npages; page++) {
        bool copy = false;

        if (page < npages) {
            copy = all ? !buffer_is_zero(b->rb->host +
                                         (page << TARGET_PAGE_BITS),
                                         TARGET_PAGE_SIZE)
                       : cpu_physical_memory_snapshot_get_dirty(
                             b->dirty, b->rb->offset +
                             (page << TARGET_PAGE_BITS), TARGET_PAGE_SIZE);
        }
        now = !copy ? NONE : test_bit(page, b->present) ? MAPPED : WRITTEN;
        if (now == kind) {
            continue;
        }
        if (kind != NONE) {
            if (!cpr_ram_move_write(b, run, page, kind == MAPPED, errp)) {
                return false;
            }
            *pages += page - run;
        }
        run = page;
        kind = now;
    }
    return true;
}

static bool cpr_ram_move_pass(CprRamMove *m, bool all, Error **errp)
{
    int64_t t = get_clock();
    guint i;

    m->pages = 0;
    for (i = 0; i < m->blocks->len; i++) {
        if (!cpr_ram_move_copy(&g_array_index(m->blocks, CprRamMoveBlock, i),
                               all, &m->pages, errp)) {
            return false;
        }
    }
    trace_cpr_ram_move_pass(m->passes, m->pages, get_clock() - t);
    m->passes++;
    return true;
}

static void cpr_ram_move_wake(void *opaque)
{
    CprRamMove *m = opaque;

    aio_co_wake(m->co);
}

/*
 * The copy while the VM runs, until few pages are dirtied between passes;
 * throttle a guest that dirties them too fast
 */
static void *cpr_ram_move_thread(void *opaque)
{
    CprRamMove *m = opaque;
    uint64_t before = UINT64_MAX;
    bool all = true;

    rcu_register_thread();
    for (;;) {
        qemu_mutex_lock_iothread();
        if (!all && m->pages > before / 2) {
            cpu_throttle_set(cpu_throttle_active() ?
                             MIN(cpu_throttle_get_percentage() +
                                 CPR_RAM_MOVE_THROTTLE_STEP,
                                 CPR_RAM_MOVE_THROTTLE_MAX) :
                             CPR_RAM_MOVE_THROTTLE_FIRST);
            trace_cpr_ram_move_throttle(cpu_throttle_get_percentage());
        }
        before = all ? UINT64_MAX : m->pages;
        cpr_ram_move_snapshot(m);
        qemu_mutex_unlock_iothread();
        if (!cpr_ram_move_pass(m, all, &m->err) ||
            (!all && m->pages <= CPR_RAM_MOVE_LAST_PAGES) ||
            m->passes >= CPR_RAM_MOVE_MAX_PASSES) {
            break;
        }
        all = false;
    }
    rcu_unregister_thread();
    /* From the main loop only, not a nested aio_poll() (as cpr.c) */
    aio_bh_schedule_oneshot(iohandler_get_aio_context(), cpr_ram_move_wake,
                            m);
    return NULL;
}

/* Memory to unmap: anonymous memory moved aside, the memfds' mappings */
typedef struct CprRamAside {
    void *addr;
    size_t len;
} CprRamAside;

/*
 * What the last move leaves to unmap: left to the process that holds the
 * old address space after execve, to our exit after a transfer, or
 * unmapped by a thread if the VM resumes here
 */
static GArray *cpr_ram_aside;

static void cpr_ram_move_aside(void *addr, size_t len)
{
    CprRamAside a = { addr, len };

    if (!cpr_ram_aside) {
        cpr_ram_aside = g_array_new(false, false, sizeof(CprRamAside));
    }
    g_array_append_val(cpr_ram_aside, a);
}

void cpr_ram_move_abort(void)
{
    CprRamMove *m = g_steal_pointer(&cpr_ram_move);
    guint i;

    if (!m) {
        return;
    }
    cpu_throttle_stop();
    if (m->co) {
        memory_global_dirty_log_stop(GLOBAL_DIRTY_MIGRATION);
    }
    if (m->blocker) {
        cpr_disallow_migration_blocker(m->blocker);
        migrate_del_blocker(m->blocker);
        error_free(m->blocker);
    }
    for (i = 0; i < m->blocks->len; i++) {
        CprRamMoveBlock *b = &g_array_index(m->blocks, CprRamMoveBlock, i);

        if (b->fd >= 0 && b->fd != b->rb->fd) {
            close(b->fd);
        }
        if (b->map) {
            /* Unmapping its pages takes time: not in the pause */
            cpr_ram_move_aside(b->map, b->rb->max_length);
        }
        g_free(b->present);
        g_free(b->dirty);
        memory_region_unref(b->rb->mr);
    }
    g_array_free(m->blocks, true);
    error_free(m->err);
    g_free(m);
}

static int cpr_ram_move_add(RAMBlock *rb, void *opaque)
{
    CprRamMove *m = opaque;
    CprRamMoveBlock b = { .rb = rb, .fd = -1 };

    if (cpr_ram_movable(rb)) {
        memory_region_ref(rb->mr);
        g_array_append_val(m->blocks, b);
    }
    return 0;
}

/* Resident pages of @b's block: what its copy will take */
static uint64_t cpr_ram_move_resident(CprRamMoveBlock *b)
{
    size_t pages = b->rb->used_length / qemu_real_host_page_size();
    g_autofree unsigned char *vec = g_malloc(pages);
    uint64_t n = 0;
    size_t i;

    if (mincore(b->rb->host, b->rb->used_length, vec) < 0) {
        return b->rb->used_length;
    }
    for (i = 0; i < pages; i++) {
        n += vec[i] & 1;
    }
    return n * qemu_real_host_page_size();
}

/* The host's MemAvailable, or UINT64_MAX if unknown */
static uint64_t cpr_ram_move_available(void)
{
    g_autofree char *meminfo = NULL;
    const char *p = NULL;

    if (g_file_get_contents("/proc/meminfo", &meminfo, NULL, NULL)) {
        p = strstr(meminfo, "MemAvailable:");
    }
    if (!p) {
        return UINT64_MAX;
    }
    return g_ascii_strtoull(p + strlen("MemAvailable:"), NULL, 10) * KiB;
}

/*
 * The copy must fit in free memory: a memfd that the kernel cannot fill
 * ends in the OOM killer, not in an error
 */
static bool cpr_ram_move_fits(CprRamMove *m, Error **errp)
{
    uint64_t need = 0, avail = cpr_ram_move_available();
    guint i;

    for (i = 0; i < m->blocks->len; i++) {
        need += cpr_ram_move_resident(&g_array_index(m->blocks,
                                                     CprRamMoveBlock, i));
    }
    if (avail != UINT64_MAX && need + CPR_RAM_MOVE_SPARE > avail) {
        error_setg(errp, "guest RAM is anonymous memory, which cprsave "
                   "moves into memfds: the copy needs %" PRIu64 " MiB and "
                   "the host has %" PRIu64 " MiB available; free memory, or "
                   "start QEMU with -machine memfd-alloc=on",
                   (need + CPR_RAM_MOVE_SPARE) / MiB, avail / MiB);
        return false;
    }
    return true;
}

bool cpr_ram_move_start(Error **errp)
{
    CprRamMove *m;
    guint i;

    if (!cpr_ram_move_needed()) {
        return true;
    }
    if (!qemu_in_coroutine()) {
        error_setg(errp, "guest RAM is anonymous memory, which cprsave "
                   "moves into memfds while the VM runs: use QMP, or start "
                   "QEMU with -machine memfd-alloc=on");
        return false;
    }
    m = g_new0(CprRamMove, 1);
    m->blocks = g_array_new(false, false, sizeof(CprRamMoveBlock));
    cpr_ram_move = m;
    qemu_ram_foreach_block(cpr_ram_move_add, m);
    if (!cpr_ram_move_fits(m, errp)) {
        cpr_ram_move_abort();
        return false;
    }
    for (i = 0; i < m->blocks->len; i++) {
        CprRamMoveBlock *b = &g_array_index(m->blocks, CprRamMoveBlock, i);
        size_t len = b->rb->max_length;

        b->fd = qemu_memfd_create(memory_region_name(b->rb->mr), len, false,
                                  0, 0, errp);
        if (b->fd < 0) {
            cpr_ram_move_abort();
            return false;
        }
        b->map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, b->fd,
                      0);
        if (b->map == MAP_FAILED) {
            b->map = NULL;
            error_setg_errno(errp, errno, "cannot map a memfd for RAM block "
                             "'%s'", b->rb->idstr);
            cpr_ram_move_abort();
            return false;
        }
        b->present = bitmap_new(len >> TARGET_PAGE_BITS);
    }
    return true;
}

bool coroutine_fn cpr_ram_move_copy_all(Error **errp)
{
    CprRamMove *m = cpr_ram_move;
    int64_t t = get_clock();

    if (!m) {
        return true;
    }
    /* Nothing else may take the pages dirtied from the log meanwhile */
    error_setg(&m->blocker, "cprsave is moving guest RAM into memfds");
    if (migrate_add_blocker_internal(m->blocker, errp) < 0) {
        g_clear_pointer(&m->blocker, error_free);
        cpr_ram_move_abort();
        return false;
    }
    cpr_allow_migration_blocker(m->blocker);
    memory_global_dirty_log_start(GLOBAL_DIRTY_MIGRATION);
    m->co = qemu_coroutine_self();
    qemu_thread_create(&m->thread, "cpr-ram-move", cpr_ram_move_thread, m,
                       QEMU_THREAD_JOINABLE);
    qemu_coroutine_yield();
    qemu_thread_join(&m->thread);
    if (m->err) {
        error_propagate(errp, g_steal_pointer(&m->err));
        cpr_ram_move_abort();
        return false;
    }
    trace_cpr_ram_move_start(m->blocks->len, m->passes, get_clock() - t);
    return true;
}

static void *cpr_ram_move_unmap_thread(void *opaque)
{
    GArray *areas = opaque;
    guint i;

    for (i = 0; i < areas->len; i++) {
        CprRamAside *a = &g_array_index(areas, CprRamAside, i);

        munmap(a->addr, a->len);
    }
    g_array_free(areas, true);
    return NULL;
}

/*
 * Move @b's anonymous memory aside, to an address with the same offset
 * in a gigabyte (page tables move whole where they can), and map its
 * memfd in its place; where the old memory went, or NULL.
 */
static void *cpr_ram_move_swap(CprRamMoveBlock *b, Error **errp)
{
    RAMBlock *rb = b->rb;
    size_t len = rb->max_length;
    int flags = MAP_SHARED | MAP_FIXED;
    uint8_t *area, *aside, *host;

    area = mmap(NULL, len + GiB, PROT_NONE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (area == MAP_FAILED) {
        error_setg_errno(errp, errno, "no address space to move RAM block "
                         "'%s' aside", rb->idstr);
        return NULL;
    }
    aside = area + (((uintptr_t)rb->host - (uintptr_t)area) & (GiB - 1));
    if (aside > area) {
        munmap(area, aside - area);
    }
    munmap(aside + len, area + len + GiB - (aside + len));
    /*
     * DONTUNMAP: the block's range stays mapped (empty) until the memfd
     * replaces it, so no other mapping can land there meanwhile
     */
    if (mremap(rb->host, len, len,
               MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP,
               aside) == MAP_FAILED) {
        error_setg_errno(errp, errno, "cannot move RAM block '%s' aside",
                         rb->idstr);
        munmap(aside, len);
        return NULL;
    }
    if (rb->flags & RAM_NORESERVE) {
        flags |= MAP_NORESERVE;
    }
    host = mmap(rb->host, len, PROT_READ | PROT_WRITE, flags, b->fd, 0);
    if (host == MAP_FAILED) {
        error_setg_errno(errp, errno, "cannot map the memfd of RAM block "
                         "'%s'", rb->idstr);
        /* Put the anonymous memory back: its place is free again */
        if (mremap(aside, len, len, MREMAP_MAYMOVE | MREMAP_FIXED,
                   rb->host) == MAP_FAILED) {
            error_report("cprsave: cannot put RAM block '%s' back in place: "
                         "%s", rb->idstr, strerror(errno));
            abort();
        }
        return NULL;
    }
    if (!machine_dump_guest_core(current_machine)) {
        qemu_madvise(rb->host, len, QEMU_MADV_DONTDUMP);
    }
    qemu_madvise(rb->host, len, QEMU_MADV_HUGEPAGE);
    qemu_madvise(rb->host, len, QEMU_MADV_DONTFORK);
    rb->fd = b->fd;
    rb->flags |= RAM_SHARED;
    return aside;
}

void cpr_ram_move_release(void)
{
    QemuThread thread;

    if (cpr_ram_aside) {
        qemu_thread_create(&thread, "cpr-ram-unmap", cpr_ram_move_unmap_thread,
                           g_steal_pointer(&cpr_ram_aside),
                           QEMU_THREAD_DETACHED);
    }
}

static int cpr_ram_move_missed(RAMBlock *rb, void *opaque)
{
    *(unsigned *)opaque += cpr_ram_movable(rb) && cpr_ram_move_fd(rb) < 0;
    return 0;
}

bool cpr_ram_move_finish(Error **errp)
{
    ERRP_GUARD();
    CprRamMove *m = cpr_ram_move;
    int64_t t = get_clock();
    unsigned missed = 0;
    guint i;

    if (!m) {
        return true;
    }
    /* What HMP may have done meanwhile (device_add) */
    qemu_ram_foreach_block(cpr_ram_move_missed, &missed);
    if (missed || ram_block_discard_is_disabled()) {
        error_setg(errp, "a device added during cprsave %s; try again",
                   missed ? "has RAM in anonymous memory"
                          : "pinned guest RAM for DMA");
        cpr_ram_move_abort();
        return false;
    }
    cpr_ram_move_snapshot(m);
    if (!cpr_ram_move_pass(m, false, errp)) {
        cpr_ram_move_abort();
        return false;
    }
    for (i = 0; i < m->blocks->len; i++) {
        CprRamMoveBlock *b = &g_array_index(m->blocks, CprRamMoveBlock, i);
        void *old = cpr_ram_move_swap(b, errp);

        if (!old) {
            break;
        }
        cpr_ram_move_aside(old, b->rb->max_length);
        trace_cpr_ram_move_block(b->rb->idstr, b->rb->max_length, b->fd);
    }
    trace_cpr_ram_move_done(m->pages, get_clock() - t);
    /* Blocks moved before a failure stay in their memfds */
    cpr_ram_move_abort();
    return !*errp;
}
