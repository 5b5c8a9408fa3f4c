/*
 * CPR snapshot: an in-memory snapshot of the running VM, restored in place
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The same state path as cprsave without execve, for fuzzers that put a
 * VM back into a known state after every input.
 *
 * Taking a snapshot stops the VM, copies every RAM block (except the
 * excluded ones, which the host uses to pass inputs and results) into a
 * shadow buffer, writes device and CPU state into memory with
 * qemu_save_device_state(), and starts dirty tracking of guest RAM.
 *
 * Restoring stops the VM, copies back only the pages dirtied since the
 * snapshot or the last restore (QEMU's DIRTY_MEMORY_MIGRATION bitmap, fed
 * by TCG's write tracking or by KVM's dirty log), drops translated code
 * of those pages under TCG, loads the saved device and CPU state and
 * resumes the VM if it was running.
 *
 * While a snapshot exists, migration and cprsave are blocked (they would
 * have to carry it along); dropping it frees the shadow memory.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/clone-visitor.h"
#include "qapi/qapi-builtin-visit.h"
#include "qapi/qapi-commands-cpr.h"
#include "qapi/qapi-events-run-state.h"
#include "qemu/bitops.h"
#include "qemu/memalign.h"
#include "qemu/rcu.h"
#include "qemu/timer.h"
#include "exec/exec-all.h"
#include "exec/ram_addr.h"
#include "exec/ramblock.h"
#include "exec/memory.h"
#include "hw/boards.h"
#include "migration/blocker.h"
#include "migration/global_state.h"
#include "migration/cpr.h"
#include "migration/migration.h"
#include "migration/savevm.h"
#include "migration/misc.h"
#include "qom/object.h"
#include "sysemu/cpu-timers.h"
#include "sysemu/hostmem.h"
#include "sysemu/kvm.h"
#include "sysemu/reset.h"
#include "sysemu/runstate.h"
#include "sysemu/tcg.h"
#include "cpr-internal.h"
#include "trace.h"

/* One RAM block as it was at the snapshot */
typedef struct CprSnapBlock {
    RAMBlock *rb;
    char *idstr;
    uint64_t length;
    uint8_t *shadow;
} CprSnapBlock;

typedef struct CprSnapshot {
    char *name;                 /* savevm's, or NULL */
    int64_t date_us;            /* when it was taken, wall clock */
    int64_t vm_clock_ns;        /* the guest's clock then */
    GArray *blocks;             /* CprSnapBlock */
    GByteArray *devices;        /* device and CPU state stream */
    CprExclude *exclude;        /* what restores leave alone */
    GPtrArray *disks;           /* overlays over writable disks, or NULL */
    CprPlan *plan;              /* of the restores after the first */
    uint64_t restores;
    uint64_t last_pages;        /* pages copied back by the last restore */
    int64_t last_ram_ns;        /* its time on guest RAM */
    int64_t last_cpu_ns;        /* its time putting CPU state back */
    int64_t last_devices_ns;    /* its time on the rest of the state */
    int64_t last_reset_ns;      /* ... of which the machine reset */
    int64_t last_total_ns;      /* all its time, stop to resume */
    Error *blocker;
} CprSnapshot;

static CprSnapshot *cpr_snap;

static void cpr_snap_block_clear(gpointer p)
{
    CprSnapBlock *b = p;

    g_free(b->idstr);
    qemu_vfree(b->shadow);
}

static void cpr_snapshot_free(CprSnapshot *s)
{
    if (s->blocker) {
        migrate_del_blocker(s->blocker);
        error_free(s->blocker);
    }
    if (s->blocks) {
        g_array_free(s->blocks, true);
    }
    if (s->devices) {
        g_byte_array_unref(s->devices);
    }
    cpr_exclude_free(s->exclude);
    cpr_plan_free(s->plan);
    if (s->disks) {
        g_ptr_array_unref(s->disks);
    }
    g_free(s->name);
    g_free(s);
}

bool cpr_snapshot_exists(void)
{
    return cpr_snap != NULL;
}

const char *cpr_snapshot_name(void)
{
    return cpr_snap ? cpr_snap->name : NULL;
}

uint64_t cpr_snapshot_restores(void)
{
    return cpr_snap ? cpr_snap->restores : 0;
}

/* Forget what was dirtied so far in @rb: the snapshot is its new base. */
static void cpr_snapshot_clear_dirty(RAMBlock *rb)
{
    cpu_physical_memory_test_and_clear_dirty(rb->offset, rb->used_length,
                                             DIRTY_MEMORY_MIGRATION);
}

/* Refuse what cannot be snapshotted or restored now */
static bool cpr_snapshot_allowed(Error **errp)
{
    if (cpr_save_in_progress() || cpr_ram_move_active()) {
        error_setg(errp, "cprsave is in progress");
        return false;
    }
    if (cpr_is_incoming()) {
        error_setg(errp, "the VM waits for cprload");
        return false;
    }
    if (!migration_is_idle()) {
        error_setg(errp, "a migration is in progress");
        return false;
    }
    return true;
}

/* The first migration blocker other than the snapshot's own */
static void cpr_snapshot_find_blocker(Error *err, void *opaque)
{
    Error **first = opaque;

    if (!*first && (!cpr_snap || err != cpr_snap->blocker) &&
        !cpr_snapshot_disks_blocker_is(err)) {
        *first = err;
    }
}

/*
 * Device state that cannot be migrated cannot be restored either.  The
 * snapshot there is does not count: a new one replaces it.
 */
static bool cpr_snapshot_devices_ok(Error **errp)
{
    ERRP_GUARD();
    Error *blocker = NULL;

    if (!qemu_savevm_state_blocked(errp)) {
        migration_foreach_blocker(cpr_snapshot_find_blocker, &blocker);
        if (!blocker) {
            return true;
        }
        error_propagate(errp, error_copy(blocker));
    }
    error_prepend(errp, "cannot snapshot: ");
    return false;
}

bool cpr_snapshot_take(const char *name, strList *exclude,
                       bool ignore_shared, bool disks, Error **errp)
{
    ERRP_GUARD();
    g_autoptr(CprExclude) x = NULL;
    bool running = runstate_is_running();
    CprSnapshot *s;
    RAMBlock *rb;

    if (!cpr_snapshot_allowed(errp)) {
        return false;
    }
    x = cpr_exclude_new(exclude, ignore_shared, errp);
    if (!x || !cpr_snapshot_devices_ok(errp)) {
        return false;
    }
    /*
     * The snapshot there was goes now, before its memory would be needed
     * for the new copy: a failure from here on leaves none.
     */
    cpr_snapshot_drop();

    s = g_new0(CprSnapshot, 1);
    s->name = g_strdup(name);
    s->exclude = g_steal_pointer(&x);
    s->blocks = g_array_new(false, true, sizeof(CprSnapBlock));
    g_array_set_clear_func(s->blocks, cpr_snap_block_clear);
    error_setg(&s->blocker, "a CPR snapshot exists; drop it with "
               "cpr-snapshot-drop (or delvm) first");
    if (migrate_add_blocker(s->blocker, errp) < 0) {
        error_free(s->blocker);
        s->blocker = NULL;
        cpr_snapshot_free(s);
        return false;
    }
    if (disks && !cpr_snapshot_disks_prepare(errp)) {
        cpr_snapshot_free(s);
        return false;
    }

    if (!cpr_stop(RUN_STATE_SAVE_VM, errp)) {
        cpr_snapshot_free(s);
        cpr_snapshot_disks_unprepare();
        goto out;
    }
    memory_global_dirty_log_start(GLOBAL_DIRTY_MIGRATION);
    memory_global_dirty_log_sync();
    WITH_RCU_READ_LOCK_GUARD() {
        RAMBLOCK_FOREACH(rb) {
            CprSnapBlock b = { .rb = rb };

            if (cpr_exclude_has_block(s->exclude, rb)) {
                continue;
            }
            b.idstr = g_strdup(rb->idstr);
            b.length = rb->used_length;
            b.shadow = qemu_try_memalign(qemu_real_host_page_size(),
                                         b.length);
            if (!b.shadow) {
                error_setg(errp, "no memory for a copy of RAM block '%s' "
                           "(%" PRIu64 " bytes)", rb->idstr, b.length);
                g_free(b.idstr);
                break;
            }
            memcpy(b.shadow, rb->host, b.length);
            cpr_snapshot_clear_dirty(rb);
            g_array_append_val(s->blocks, b);
        }
    }
    if (!*errp) {
        s->devices = cpr_save_devices_some(cpr_exclude_saves, s->exclude,
                                           true, errp);
        s->date_us = g_get_real_time();
        s->vm_clock_ns = qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL);
    }
    if (!*errp && disks) {
        s->disks = cpr_snapshot_disks_add(errp);
    }
    if (*errp) {
        memory_global_dirty_log_stop(GLOBAL_DIRTY_MIGRATION);
        cpr_snapshot_free(s);
        cpr_snapshot_disks_unprepare();
    } else {
        cpr_snap = s;
        trace_cpr_snapshot_take(s->blocks->len, s->devices->len);
    }
out:
    if (running) {
        vm_start();
    }
    return !*errp;
}

/*
 * Copy back the pages of @b dirtied since the snapshot (or the last
 * restore) and clear their dirty bits; the number of pages.
 */
static uint64_t cpr_snapshot_restore_block(CprSnapBlock *b)
{
    RAMBlock *rb = b->rb;
    unsigned long first = rb->offset >> TARGET_PAGE_BITS;
    unsigned long end = first + (b->length >> TARGET_PAGE_BITS);
    unsigned long page = first;
    uint64_t pages = 0;

    WITH_RCU_READ_LOCK_GUARD() {
        DirtyMemoryBlocks *blocks =
            qatomic_rcu_read(&ram_list.dirty_memory[DIRTY_MEMORY_MIGRATION]);

        while (page < end) {
            unsigned long *map = blocks->blocks[page /
                                                DIRTY_MEMORY_BLOCK_SIZE];
            unsigned long base = page - page % DIRTY_MEMORY_BLOCK_SIZE;
            unsigned long stop = MIN(end - base, DIRTY_MEMORY_BLOCK_SIZE);
            unsigned long bit = find_next_bit(map, stop, page - base);

            while (bit < stop) {
                unsigned long zero = find_next_zero_bit(map, stop, bit);
                ram_addr_t start = (base + bit) << TARGET_PAGE_BITS;
                ram_addr_t len = (zero - bit) << TARGET_PAGE_BITS;
                ram_addr_t off = start - rb->offset;

                memcpy(rb->host + off, b->shadow + off, len);
#ifdef CONFIG_TCG
                if (tcg_enabled()) {
                    tb_invalidate_phys_range(start, start + len);
                }
#endif
                cpu_physical_memory_set_dirty_range(start, len,
                                                    1 << DIRTY_MEMORY_VGA);
                pages += zero - bit;
                bit = find_next_bit(map, stop, zero);
            }
            page = base + stop;
        }
    }
    if (pages) {
        cpr_snapshot_clear_dirty(rb);
    }
    return pages;
}

/* Copy back every page dirtied since the last time; how many */
static uint64_t cpr_snapshot_restore_ram(CprSnapshot *s)
{
    uint64_t pages = 0;
    guint i;

    for (i = 0; i < s->blocks->len; i++) {
        pages += cpr_snapshot_restore_block(&g_array_index(s->blocks,
                                                           CprSnapBlock, i));
    }
    return pages;
}

/*
 * qemu_system_reset() without its CPU synchronisation: under KVM it would
 * read every vCPU's registers before the reset and write them back after
 * it, and the load that follows writes them all anyway.
 */
/* The snapshot's RAM blocks must still be there, the same size. */
static bool cpr_snapshot_blocks_present(CprSnapshot *s, Error **errp)
{
    guint i;

    for (i = 0; i < s->blocks->len; i++) {
        CprSnapBlock *b = &g_array_index(s->blocks, CprSnapBlock, i);
        RAMBlock *rb = qemu_ram_block_by_name(b->idstr);

        if (rb != b->rb || rb->used_length != b->length) {
            error_setg(errp, "RAM block '%s' changed since the snapshot; "
                       "take a new one", b->idstr);
            return false;
        }
    }
    return true;
}

/*
 * Compare every RAM block with its copy in the snapshot, then save device
 * and CPU state again and compare it with the snapshot's; an error names
 * the first block and page, or section, that differs.
 */
static bool cpr_snapshot_verify(CprSnapshot *s, Error **errp)
{
    g_autoptr(GByteArray) now = NULL;
    g_autofree char *where = NULL;
    uint64_t off;
    guint i;

    for (i = 0; i < s->blocks->len; i++) {
        CprSnapBlock *b = &g_array_index(s->blocks, CprSnapBlock, i);

        for (off = 0; off < b->length; off += TARGET_PAGE_SIZE) {
            if (memcmp(b->rb->host + off, b->shadow + off,
                       MIN(TARGET_PAGE_SIZE, b->length - off))) {
                error_setg(errp, "RAM block '%s' differs from the snapshot "
                           "at offset 0x%" PRIx64 " after the restore",
                           b->idstr, off);
                return false;
            }
        }
    }

    if (!cpr_exclude_check(s->exclude, errp)) {
        return false;
    }
    now = cpr_save_devices_some(cpr_exclude_saves, s->exclude, true, errp);
    if (!now) {
        return false;
    }
    for (i = 0; i < MIN(now->len, s->devices->len); i++) {
        if (now->data[i] != s->devices->data[i]) {
            break;
        }
    }
    if (i < now->len || i < s->devices->len) {
        where = cpr_devices_section_at(s->devices->data, s->devices->len, i);
        error_setg(errp, "device state after the restore differs from the "
                   "snapshot's at byte %u of %u (%s)", i, s->devices->len,
                   where);
        return false;
    }
    return true;
}

/*
 * Guest RAM of a restore: the pages the dirty log has, put back from the
 * shadow copy.  After the load, under KVM, those KVM wrote (it writes the
 * kvmclock and wall clock structures when their MSRs are loaded), in its
 * dirty log; QEMU's own writes are in the dirty bitmap already.  So RAM
 * is exactly the snapshot's.
 */
static uint64_t cpr_snapshot_ram(void *opaque, bool after_load)
{
    if (!after_load || kvm_enabled()) {
        memory_global_dirty_log_sync();
    }
    return cpr_snapshot_restore_ram(opaque);
}

/*
 * Restore @s from its device state stream, then by replaying its plan,
 * and compare the device state each gives
 */
static bool cpr_snapshot_compare_paths(CprSnapshot *s, CprRestoreTimes *t,
                                       Error **errp)
{
    g_autoptr(GByteArray) streamed = NULL;
    g_autoptr(GByteArray) replayed = NULL;
    g_autofree char *where = NULL;
    g_autoptr(CprPlan) plan = g_steal_pointer(&s->plan);
    guint i;

    if (!current_machine->cpr_restore_plan) {
        error_setg(errp, "restore plans are off (machine property "
                   "cpr-restore-plan): there is no second path to compare");
        return false;
    }
    /* From the stream: a new plan is recorded if there was none */
    if (!cpr_restore_machine(s->devices->data, s->devices->len,
                             cpr_snapshot_ram, s, s->exclude,
                             plan ? NULL : &plan, t, errp)) {
        return false;
    }
    streamed = cpr_save_devices_some(cpr_exclude_saves, s->exclude, true,
                                     errp);
    if (!streamed) {
        return false;
    }
    if (!plan || !cpr_plan_usable(plan)) {
        error_setg(errp, "no restore plan could be made of this snapshot");
        return false;
    }
    if (!cpr_restore_machine(s->devices->data, s->devices->len,
                             cpr_snapshot_ram, s, s->exclude, &plan, t,
                             errp)) {
        return false;
    }
    /* A replay that fails is done again from the stream, with a new plan */
    if (!t->replayed) {
        error_setg(errp, "the restore plan could not be replayed; see the "
                   "cpr_plan_replay_failed trace event");
        return false;
    }
    replayed = cpr_save_devices_some(cpr_exclude_saves, s->exclude, true,
                                     errp);
    if (!replayed) {
        return false;
    }
    for (i = 0; i < MIN(streamed->len, replayed->len); i++) {
        if (streamed->data[i] != replayed->data[i]) {
            break;
        }
    }
    if (i < streamed->len || i < replayed->len) {
        where = cpr_devices_section_at(streamed->data, streamed->len, i);
        error_setg(errp, "the restore plan gives device state other than "
                   "loading the stream does, at byte %u of %u (%s)", i,
                   streamed->len, where);
        return false;
    }
    /* Only a plan that gave the same state is kept */
    s->plan = g_steal_pointer(&plan);
    return true;
}

/*
 * What can refuse the restore, before anything changes: excluded devices
 * gone or out of step, disks no longer on their overlays
 */
static bool cpr_snapshot_restorable(CprSnapshot *s, Error **errp)
{
    return cpr_exclude_check(s->exclude, errp) &&
           cpr_snapshot_disks_empty(s->disks, errp);
}

/*
 * Restore @s into a stopped machine (or one whose only vCPU is ours),
 * cpr_snapshot_restorable() checked
 */
static bool cpr_snapshot_restore_stopped(CprSnapshot *s, bool verify,
                                         bool compare, Error **errp)
{
    ERRP_GUARD();
    CprRestoreTimes t = { 0 };
    int64_t t0 = get_clock();
    bool ok;

    /*
     * The reset and the load set each CPU's control registers one by one,
     * each change flushing its whole TLB (at once, in a vCPU's thread):
     * flush once at the end instead
     */
    if (tcg_enabled()) {
        tlb_flush_defer();
    }
    if (compare) {
        ok = cpr_snapshot_compare_paths(s, &t, errp);
    } else {
        ok = cpr_restore_machine(s->devices->data, s->devices->len,
                                 cpr_snapshot_ram, s, s->exclude, &s->plan,
                                 &t, errp);
    }
    if (tcg_enabled()) {
        tlb_flush_resume();
    }
    if (ok && verify) {
        ok = cpr_snapshot_verify(s, errp);
    }
    if (!ok) {
        /* Not a machine to run: keep it paused, the snapshot is there. */
        error_append_hint(errp, "The VM stays paused; the snapshot is "
                          "kept.\n");
    }
    s->restores++;
    s->last_pages = t.pages;
    s->last_ram_ns = t.ram_ns;
    s->last_cpu_ns = t.cpu_ns;
    s->last_devices_ns = t.devices_ns;
    s->last_reset_ns = t.reset_ns;
    s->last_total_ns = get_clock() - t0;
    return ok;
}

static CprSnapshot *cpr_snapshot_for_restore(Error **errp)
{
    if (!cpr_snap) {
        error_setg(errp, "there is no CPR snapshot to restore; take one "
                   "with cpr-snapshot first");
        return NULL;
    }
    if (!cpr_snapshot_allowed(errp) ||
        !cpr_snapshot_blocks_present(cpr_snap, errp)) {
        return NULL;
    }
    return cpr_snap;
}

bool cpr_snapshot_restore(bool verify, bool compare, Error **errp)
{
    bool running = runstate_is_running();
    CprSnapshot *s = cpr_snapshot_for_restore(errp);
    int64_t t0, t1, t2;
    bool ok;

    if (!s) {
        return false;
    }
    t0 = get_clock();
    /*
     * A running VM is paused only within this command: no STOP and
     * RESUME events for clients to handle thousands of times a second,
     * unless it stays paused
     */
    if (running) {
        vm_stop_quietly(RUN_STATE_RESTORE_VM);
    }
    t1 = get_clock();
    if (!cpr_snapshot_restorable(s, errp)) {
        error_append_hint(errp, "The VM stays paused; the snapshot is "
                          "kept.\n");
        if (running) {
            qapi_event_send_stop();
        }
        return false;
    }
    ok = cpr_snapshot_restore_stopped(s, verify, compare, errp);
    if (ok && running) {
        t2 = get_clock();
        vm_start_quietly();
        trace_cpr_snapshot_restore_runstate(t1 - t0, get_clock() - t2);
    } else if (running) {
        qapi_event_send_stop();
    }
    s->last_total_ns = get_clock() - t0;
    trace_cpr_snapshot_restore(s->last_pages, s->last_ram_ns, s->last_cpu_ns,
                               s->last_devices_ns, s->last_reset_ns,
                               s->last_total_ns);
    return ok;
}

bool cpr_snapshot_restore_in_vcpu(bool *started, Error **errp)
{
    CprSnapshot *s;
    bool ok;

    *started = false;
    if (!current_cpu || CPU_NEXT(first_cpu) || !runstate_is_running() ||
        current_cpu->stop) {
        error_setg(errp, "a restore in a vCPU's thread needs a running VM "
                   "with that one vCPU");
        return false;
    }
    s = cpr_snapshot_for_restore(errp);
    if (!s || !cpr_snapshot_restorable(s, errp)) {
        return false;
    }
    *started = true;
    /*
     * As for a pause: the guest's clock stands still, and what watches
     * the run state is told it stops and runs again (the run state
     * itself does not change).  Nothing else runs: this thread holds the
     * BQL, and it is the only vCPU.
     */
    cpu_disable_ticks();
    vm_state_notify(false, RUN_STATE_RESTORE_VM);
    ok = cpr_snapshot_restore_stopped(s, false, false, errp);
    vm_state_notify(true, RUN_STATE_RUNNING);
    cpu_enable_ticks();
    trace_cpr_snapshot_restore(s->last_pages, s->last_ram_ns, s->last_cpu_ns,
                               s->last_devices_ns, s->last_reset_ns,
                               s->last_total_ns);
    return ok;
}

void cpr_snapshot_drop(void)
{
    if (cpr_snap) {
        cpr_snapshot_free(cpr_snap);
        cpr_snap = NULL;
        memory_global_dirty_log_stop(GLOBAL_DIRTY_MIGRATION);
        trace_cpr_snapshot_drop();
    }
}

CprSnapshotInfo *cpr_snapshot_info(void)
{
    CprSnapshot *s = cpr_snap;
    CprSnapshotInfo *info;
    guint i;

    if (!s) {
        return NULL;
    }
    info = g_new0(CprSnapshotInfo, 1);
    for (i = 0; i < s->blocks->len; i++) {
        info->ram_bytes += g_array_index(s->blocks, CprSnapBlock, i).length;
    }
    info->device_bytes = s->devices->len;
    info->has_name = s->name != NULL;
    info->name = g_strdup(s->name);
    info->date_sec = s->date_us / G_USEC_PER_SEC;
    info->date_nsec = (s->date_us % G_USEC_PER_SEC) * 1000;
    info->vm_clock_sec = s->vm_clock_ns / NANOSECONDS_PER_SECOND;
    info->vm_clock_nsec = s->vm_clock_ns % NANOSECONDS_PER_SECOND;
    info->excluded = cpr_exclude_ids(s->exclude);
    info->ignore_shared = cpr_exclude_ignores_shared(s->exclude);
    info->restores = s->restores;
    info->last_restore_pages = s->last_pages;
    info->last_restore_ram_ns = s->last_ram_ns;
    info->last_restore_cpu_ns = s->last_cpu_ns;
    info->last_restore_devices_ns = s->last_devices_ns;
    info->last_restore_ns = s->last_total_ns;
    if (s->plan) {
        info->has_plan = true;
        info->plan = cpr_plan_info(s->plan);
    }
    return info;
}

void qmp_cpr_snapshot(bool has_exclude, strList *exclude, Error **errp)
{
    cpr_snapshot_take(NULL, exclude, false, false, errp);
}

void qmp_cpr_restore(bool has_verify, bool verify, bool has_compare_paths,
                     bool compare_paths, Error **errp)
{
    cpr_snapshot_restore(has_verify && verify,
                         has_compare_paths && compare_paths, errp);
}

void qmp_cpr_snapshot_drop(Error **errp)
{
    if (!cpr_snap) {
        error_setg(errp, "there is no CPR snapshot");
        return;
    }
    cpr_snapshot_drop();
}
