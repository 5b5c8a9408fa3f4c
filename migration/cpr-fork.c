/*
 * CPR fork: running children of one VM, sharing its RAM copy-on-write
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Parent, QMP cpr-fork: the VM stops at the fork point, its device and
 * CPU state is saved in memory, and its own guest RAM is mapped again
 * copy-on-write (MAP_PRIVATE) from its memfds, which from then on hold the
 * fork point and are never written again: neither the parent, if it is
 * resumed, nor any child changes what the others see.  The parent then
 * listens on the channel and serves every child that connects: the
 * memfds of guest RAM (SCM_RIGHTS) and the saved state.
 *
 * Child, a QEMU started with its own command line (same machine and
 * devices, its own monitor, consoles, netdev and disks) plus "-incoming
 * cpr-fork:unix:PATH": it does its whole start-up first, then connects
 * (waiting for PATH to appear: children started before the fork are
 * ready to run within milliseconds of it), takes the memfds, maps them
 * MAP_PRIVATE over its own guest RAM, loads the state and runs from the
 * fork point.  QMP cpr-fork-reset puts
 * it back there: its copies of guest pages are dropped (the parent's
 * pages show through again) and the state is loaded again.
 */

#include "qemu/osdep.h"
#ifdef CONFIG_INOTIFY1
#include <sys/inotify.h>
#endif
#include "qapi/error.h"
#include "qapi/qapi-commands-cpr.h"
#include "qemu/error-report.h"
#include "qemu/main-loop.h"
#include "block/block_int.h"
#include "sysemu/block-backend.h"
#include "qemu/rcu.h"
#include "qemu/thread.h"
#include "qemu/timer.h"
#include "exec/ram_addr.h"
#include "migration/blocker.h"
#include "migration/cpr.h"
#include "sysemu/kvm.h"
#include "sysemu/runstate.h"
#include "sysemu/sysemu.h"
#include "cpr-internal.h"
#include "trace.h"

/* Parent: the fork point's state, and where children come for it */
static GByteArray *cpr_fork_state;
static int cpr_fork_listen = -1;
static char *cpr_fork_path;
static Error *cpr_fork_blocker;
static VMChangeStateEntry *cpr_fork_vm_state;  /* until it runs again */

/* Child: connected to the parent until the state is loaded */
static int cpr_fork_in = -1;
static char *cpr_fork_channel;
static CprFile *cpr_fork_point;
/* What loading its device state did, for cpr-fork-reset */
static CprPlan *cpr_fork_plan;

bool cpr_fork_is_child(void)
{
    return cpr_fork_channel != NULL;
}

static bool cpr_fork_is_parent(void)
{
    return cpr_fork_state != NULL;
}

/* Parent: one child connected; it gets guest RAM and the state */
static void cpr_fork_serve(void *opaque)
{
    g_autoptr(GByteArray) state = NULL;
    CprForkRam ram;
    Error *err = NULL;
    int fd = cpr_channel_accept_one(cpr_fork_listen, cpr_fork_path, &err);

    if (fd < 0) {
        warn_reportf_err(err, "cpr-fork: ");
        return;
    }
    cpr_ram_fork_fds(&ram);
    state = cpr_state_serialize_fds((char **)ram.names->pdata, ram.ids,
                                    ram.fds);
    if (!cpr_channel_send_state(fd, state, ram.fds, &err)) {
        goto out;
    }
    cpr_channel_send(fd, CPR_MSG_DEVICES, cpr_fork_state->data,
                     cpr_fork_state->len, NULL, 0, &err);
    trace_cpr_fork_served(ram.fds->len);
    if (!err) {
        cpr_step("fork-served");
    }
out:
    if (err) {
        warn_reportf_err(err, "cpr-fork: a child did not get the VM: ");
    }
    close(fd);
    g_ptr_array_unref(ram.names);
    g_array_unref(ram.ids);
    g_array_unref(ram.fds);
}

/* Parent: it runs again on its own copy-on-write view of the fork point */
static void cpr_fork_resuming(void *opaque, bool running, RunState state)
{
    Error *err = NULL;

    if (!running || !cpr_fork_vm_state) {
        return;
    }
    if (!cpr_ram_fork_private(&err)) {
        /* Running on the memfds would change the children's memory */
        error_reportf_err(err, "cpr-fork: ");
        abort();
    }
    qemu_del_vm_change_state_handler(cpr_fork_vm_state);
    cpr_fork_vm_state = NULL;
}

static void cpr_fork_blockers(CprBlockerList ***tail)
{
    if (cpr_fork_is_child() && g_str_has_prefix(cpr_fork_channel, "file:")) {
        cpr_add_blocker(tail, CPR_MODE_FORK, "fork",
                        "this VM is a child of a file; forking it is not "
                        "done yet");
    } else if (!cpr_fork_is_child()) {
        cpr_ram_add_blockers(tail, CPR_MODE_FORK);
    }
    if (cpr_fork_is_child() || cpr_fork_is_parent()) {
        const char *who = cpr_fork_is_child() ? "child" : "parent";
        CprMode modes[] = { CPR_MODE_RESTART, CPR_MODE_TRANSFER };
        int i;

        for (i = 0; i < ARRAY_SIZE(modes); i++) {
            cpr_add_blocker(tail, modes[i], "fork",
                            "guest RAM of a fork %s is a copy-on-write view "
                            "of the fork point, which another process cannot "
                            "take over", who);
        }
        cpr_add_blocker(tail, CPR_MODE_CHECKPOINT, "fork",
                        "guest RAM of a fork %s is a copy-on-write view of "
                        "the fork point; checkpoints of it are not done yet",
                        who);
    }
}

void qmp_cpr_fork(const char *channel, bool has_exclude, strList *exclude,
                  Error **errp)
{
    ERRP_GUARD();
    g_autoptr(GByteArray) state = NULL;
    g_autoptr(CprExclude) x = NULL;
    bool was_running = runstate_is_running();
    int64_t t0, t1, t2;

    if (cpr_fork_is_parent()) {
        error_setg(errp, "this VM is a fork parent already (children "
                   "connect to '%s')", cpr_fork_path);
        return;
    }
    if (!cpr_mode_allowed(CPR_MODE_FORK, errp)) {
        return;
    }
    x = cpr_exclude_new(exclude, false, errp);
    if (!x) {
        return;
    }
    t0 = get_clock();
    if (!cpr_stop(RUN_STATE_PAUSED, errp)) {
        return;
    }
    t1 = get_clock();
    /* Before the state: its RAM table marks the blocks not given */
    cpr_ram_fork_exclude(g_steal_pointer(&x));
    cpr_set_saving(true);
    state = cpr_file_save(CPR_MODE_FORK, errp);
    cpr_set_saving(false);
    t2 = get_clock();
    if (!state) {
        goto resume;
    }
    /* A child's own pages go to its children as one more layer */
    if (cpr_fork_is_child() && !cpr_ram_fork_delta(errp)) {
        goto resume;
    }
    cpr_fork_listen = cpr_channel_listen(channel, 64, errp);
    if (cpr_fork_listen < 0) {
        goto resume;
    }
    ram_block_discard_disable(true);
    cpr_fork_state = g_steal_pointer(&state);
    cpr_fork_path = g_strdup(channel + 5);
    trace_cpr_fork_point(channel, t1 - t0, t2 - t1);
    /*
     * The memfds hold the fork point from here on: nothing may write
     * them.  Loading a VM into this one would: blocked for good.  Before
     * the VM runs again its RAM is mapped copy-on-write (which takes time
     * for every page mapped now: not in the way of the first children).
     */
    error_setg(&cpr_fork_blocker, "this VM is a fork parent: its guest "
               "RAM is its children's fork point");
    migrate_add_blocker_internal(cpr_fork_blocker, NULL);
    cpr_fork_vm_state = qemu_add_vm_change_state_handler(cpr_fork_resuming,
                                                         NULL);
    qemu_set_fd_handler(cpr_fork_listen, cpr_fork_serve, NULL, NULL);
    return;

resume:
    cpr_ram_fork_exclude(NULL);
    if (was_running) {
        vm_start();
    }
}

void cpr_fork_incoming(const char *channel, Error **errp)
{
    if ((!g_str_has_prefix(channel, "unix:") &&
         !g_str_has_prefix(channel, "file:")) || !channel[5]) {
        error_setg(errp, "-incoming cpr-fork:%s: the fork parent is "
                   "unix:PATH (its socket) or file:PATH (a checkpoint)",
                   channel);
        return;
    }
    /* Start-up goes on as for any VM; the fork point comes at its end */
    cpr_fork_channel = g_strdup(channel);
    /*
     * A child's loads (the first one, and each reset) reuse heap memory
     * that start-up freed.  Given back to the system, each page of it
     * would be faulted in again, at tens of microseconds a page in a VM.
     */
    rcu_set_malloc_trim(false);
}

static int cpr_fork_adopt_one(RAMBlock *rb, void *opaque)
{
    if (qemu_ram_is_migratable(rb)) {
        cpr_ram_adopt(rb);
    }
    return 0;
}

/*
 * Child of a file (a checkpoint, or a reboot-mode file): its pages of
 * guest RAM are mapped copy-on-write, as a parent's memfds would be
 */
static bool cpr_fork_take_file(const char *path, Error **errp)
{
    g_autoptr(CprFile) cf = cpr_file_read(path, errp);
    bool ok;
    int fd;

    if (!cf) {
        return false;
    }
    if (cf->mode != CPR_MODE_REBOOT) {
        error_setg(errp, "'%s' was saved in mode '%s'; children are made "
                   "of checkpoints and reboot-mode files", path,
                   CprMode_str(cf->mode));
        return false;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        error_setg_errno(errp, errno, "cannot open '%s'", path);
        return false;
    }
    ram_block_discard_disable(true);
    ok = cpr_ram_fork_map_file(cf, fd, errp);
    close(fd);                  /* the mappings keep the file */
    if (!ok) {
        return false;
    }
    /* Loaded as a fork point, each reset loads it again */
    cf->mode = CPR_MODE_FORK;
    cpr_fork_point = g_steal_pointer(&cf);
    return cpr_load_state(CPR_MODE_FORK, cpr_fork_point, errp);
}

/*
 * Child, connected to the parent (cpr_fork_in): map its guest RAM
 * copy-on-write over this VM's and load its state
 */
static bool cpr_fork_take(Error **errp)
{
    ERRP_GUARD();
    GByteArray *b = NULL;

    if (g_str_has_prefix(cpr_fork_channel, "file:")) {
        return cpr_fork_take_file(cpr_fork_channel + 5, errp);
    }
    if (cpr_channel_recv_state(cpr_fork_in, false, errp) < 0) {
        goto fail;
    }
    ram_block_discard_disable(true);
    qemu_ram_foreach_block(cpr_fork_adopt_one, NULL);
    if (!cpr_channel_recv(cpr_fork_in, CPR_MSG_DEVICES, &b, NULL, errp)) {
        goto fail;
    }
    close(cpr_fork_in);
    cpr_fork_in = -1;
    cpr_fork_point = cpr_file_parse(cpr_fork_channel, b, errp);
    return cpr_fork_point &&
           cpr_load_state(CPR_MODE_FORK, cpr_fork_point, errp);

fail:
    error_prepend(errp, "the fork parent: ");
    return false;
}

/* Take the VM from the parent or the file, or exit saying why */
static void cpr_fork_take_or_exit(void)
{
    Error *err = NULL;

    if (!cpr_fork_take(&err)) {
        error_reportf_err(err, "-incoming cpr-fork:%s: ", cpr_fork_channel);
        exit(1);
    }
    trace_cpr_fork_child_running();
}

/*
 * Until the parent listens, a child tries again when something is made
 * or renamed in the socket's directory (the parent's listening socket is
 * renamed to its path), and at least this often
 */
#define CPR_FORK_RETRY_US 500
#define CPR_FORK_WATCHED_RETRY_US (20 * 1000)

static QEMUTimer *cpr_fork_retry;
static int cpr_fork_watch = -1;

static void cpr_fork_connect(void *opaque);

static void cpr_fork_watch_event(void *opaque)
{
    char buf[4096] QEMU_ALIGNED(8);

    while (read(cpr_fork_watch, buf, sizeof(buf)) > 0) {
        /* Which entry changed does not matter: try again */
    }
    cpr_fork_connect(NULL);
}

/* Watch the socket's directory; false if it cannot be watched */
static bool cpr_fork_watch_dir(void)
{
#ifdef CONFIG_INOTIFY1
    g_autofree char *dir = g_path_get_dirname(cpr_fork_channel + 5);

    cpr_fork_watch = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (cpr_fork_watch < 0) {
        return false;
    }
    if (inotify_add_watch(cpr_fork_watch, dir, IN_CREATE | IN_MOVED_TO) < 0) {
        close(cpr_fork_watch);
        cpr_fork_watch = -1;
        return false;
    }
    qemu_set_fd_handler(cpr_fork_watch, cpr_fork_watch_event, NULL, NULL);
    return true;
#else
    return false;
#endif
}

/*
 * Closing an inotify instance waits for the kernel to free its marks
 * (an SRCU grace period: 14 ms seen here), so a thread of its own closes
 * it while the child goes on
 */
static void *cpr_fork_close_watch(void *opaque)
{
    close(GPOINTER_TO_INT(opaque));
    return NULL;
}

static void cpr_fork_unwatch(void)
{
    QemuThread thread;

    g_clear_pointer(&cpr_fork_retry, timer_free);
    if (cpr_fork_watch >= 0) {
        qemu_set_fd_handler(cpr_fork_watch, NULL, NULL, NULL);
        qemu_thread_create(&thread, "cpr-fork-unwatch", cpr_fork_close_watch,
                           GINT_TO_POINTER(cpr_fork_watch),
                           QEMU_THREAD_DETACHED);
        cpr_fork_watch = -1;
    }
}

/*
 * A child started before the fork (a warm pool) waits for the parent in
 * the main loop: its monitors answer meanwhile.  A socket file nobody
 * listens on (left over) is waited on too: the parent's listening socket
 * is renamed over it.
 */
static void cpr_fork_connect(void *opaque)
{
    Error *err = NULL;
    bool first = !cpr_fork_retry;

    cpr_fork_in = cpr_channel_connect(cpr_fork_channel, &err);
    if (cpr_fork_in >= 0) {
        cpr_fork_unwatch();
        cpr_fork_take_or_exit();
        return;
    }
    error_free(err);
    if (first) {
        trace_cpr_fork_child_waiting(cpr_fork_channel);
        /*
         * Buffers for the state to come, and for a fork of this child;
         * KVM's memory slots for the map as it is (the state changes
         * only a few)
         */
        cpr_devices_prepare_save();
        if (kvm_enabled()) {
            kvm_release_memory_slots();
        }
        cpr_fork_retry = timer_new_us(QEMU_CLOCK_REALTIME, cpr_fork_connect,
                                      NULL);
        if (cpr_fork_watch_dir()) {
            /* The parent may have come before the watch did */
            cpr_fork_connect(NULL);
            return;
        }
    }
    timer_mod(cpr_fork_retry, qemu_clock_get_us(QEMU_CLOCK_REALTIME) +
              (cpr_fork_watch >= 0 ? CPR_FORK_WATCHED_RETRY_US :
               CPR_FORK_RETRY_US));
}

static void cpr_fork_started(void)
{
    if (!cpr_fork_is_child()) {
        /* Any VM may become a parent: its save buffers are ready */
        cpr_devices_prepare_save();
        return;
    }
    if (cpr_fork_point) {
        return;
    }
    if (g_str_has_prefix(cpr_fork_channel, "file:")) {
        cpr_fork_take_or_exit();
    } else {
        cpr_fork_connect(NULL);
    }
}

static void cpr_fork_load_done(void)
{
    cpr_ram_load_done();
    cpr_state_incoming_done();
}

/* Guest RAM of a fork reset: the child's own copies of pages dropped */
static uint64_t cpr_fork_reset_ram(void *opaque, bool after_load)
{
    /* What the load wrote (a new generation ID) is the child's own */
    return after_load ? 0 : cpr_ram_fork_drop_private();
}

/*
 * The block backends @names, checked: each has an image over a backing
 * image (the child's overlay on the fork point's disk), or NULL
 */
static GPtrArray *cpr_fork_reset_disks(strList *names, Error **errp)
{
    g_autoptr(GPtrArray) blks = g_ptr_array_new();

    for (; names; names = names->next) {
        BlockBackend *blk = blk_by_name(names->value);
        BlockDriverState *bs = blk ? blk_bs(blk) : NULL;

        if (!bs) {
            error_setg(errp, "no disk '%s'", names->value);
            return NULL;
        }
        if (!bdrv_cow_bs(bs) || !bs->drv->bdrv_make_empty ||
            bdrv_is_read_only(bs)) {
            error_setg(errp, "disk '%s' is not a writable overlay on a "
                       "backing image: emptying it would lose its data",
                       names->value);
            return NULL;
        }
        g_ptr_array_add(blks, blk);
    }
    return g_steal_pointer(&blks);
}

void qmp_cpr_fork_reset(bool has_empty_disks, strList *empty_disks,
                        Error **errp)
{
    g_autoptr(GPtrArray) blks = NULL;
    CprRestoreTimes t = { 0 };
    int64_t t0 = get_clock();
    guint i;

    if (!cpr_fork_point || cpr_is_incoming()) {
        error_setg(errp, "this VM is not a running fork child");
        return;
    }
    blks = cpr_fork_reset_disks(empty_disks, errp);
    if (!blks) {
        return;
    }
    vm_stop(RUN_STATE_RESTORE_VM);
    /* Drained: the overlays go back to the fork point's disk */
    for (i = 0; i < blks->len; i++) {
        BlockBackend *blk = g_ptr_array_index(blks, i);

        /* The backend's own link to its image, which may write it */
        if (bdrv_make_empty((BdrvChild *)blk_root(blk), errp) < 0) {
            error_prepend(errp, "cannot empty disk '%s': ", blk_name(blk));
            error_append_hint(errp, "The VM stays paused.\n");
            return;
        }
    }
    if (!cpr_restore_machine(cpr_fork_point->data +
                             cpr_fork_point->devices_offset,
                             cpr_fork_point->devices_len,
                             cpr_fork_reset_ram, NULL, NULL, &cpr_fork_plan,
                             &t, errp)) {
        error_prepend(errp, "cannot load the fork point again: ");
        return;
    }
    cpr_enter_runstate(cpr_saved_runstate());
    trace_cpr_fork_reset(t.pages, t.ram_ns, t.cpu_ns, t.devices_ns,
                         get_clock() - t0);
}

const CprModeOps cpr_fork_ops = {
    .mode = CPR_MODE_FORK,
    .stop_state = RUN_STATE_PAUSED,
    .blockers = cpr_fork_blockers,
    .ram_kept = true,
    .obeys_autostart = true,
    .load_done = cpr_fork_load_done,
    .started = cpr_fork_started,
    .other_mode_hint = "; a fork child loads its parent's state by itself",
};
