/*
 * CPR transfer mode: hand the VM over to another QEMU process
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The new QEMU is started beforehand with the same command line plus
 * "-incoming cpr:unix:PATH"; it listens on PATH before it creates
 * anything.  cprsave with mode "transfer":
 *
 *   old                                  new
 *   keepers register descriptors
 *   state  + descriptors  ------------>  takes them as a restarted
 *   (the VM runs on)                     process does, finishes its
 *                                        start-up without touching what
 *                                        the old one still uses
 *                        <------------  ready
 *   stop the VM, save device state,
 *   inactivate images
 *   devices (the state envelope)  ---->  check and load it, activate
 *                                        images
 *                        <------------  commit
 *   _exit(0)                             resume, attach the kept QMP
 *                                        connections, answer cprsave
 *
 * The commit point is the new process's "commit": until the old process
 * reads it, any failure (nobody listening, the new process exiting or
 * refusing the state, end of file) makes the old one activate its images
 * again, resume the VM and fail cprsave with the reason.  After it, the
 * new process runs the VM even if the old one is gone.  A new process
 * that fails before the commit sends why and exits without any clean-up:
 * what it took over belongs to the old one.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/coroutine.h"
#include "qemu/error-report.h"
#include "qemu/timer.h"
#include "block/block.h"
#include "migration/cpr.h"
#include "sysemu/kvm.h"
#include "sysemu/runstate.h"
#include "sysemu/sysemu.h"
#include "cpr-internal.h"
#include "trace.h"

/* How long the new process polls for the device state before it sleeps */
#define CPR_TRANSFER_SPIN_NS (50 * SCALE_MS)

/* Old process: connected to the new one during cprsave */
static int cpr_transfer_out = -1;
/*
 * The CPR state sent and what its descriptors are, to see later whether
 * anything changed before the VM stopped
 */
static GByteArray *cpr_transfer_sent;
static GArray *cpr_transfer_sent_ids;
/* The coroutine waiting for the new process, and whether QEMU shuts down */
static Coroutine *cpr_transfer_waiting;
static bool cpr_transfer_cancelled;
static Notifier cpr_transfer_shutdown;
/* The images could not be taken back: the VM must not run */
static bool cpr_transfer_images_lost;

/* New process: connected to the old one until the commit */
static int cpr_transfer_in = -1;
/* A relay: the socket it hands the VM back over, or why it cannot */
static int cpr_transfer_back = -1;
static Error *cpr_transfer_back_err;
static char *cpr_transfer_channel;

/* New process: what waits until it has taken the VM */
typedef struct CprDeferred {
    CprDeferFn *fn;
    void *opaque;
} CprDeferred;
static GSList *cpr_transfer_deferred;

/* The value of option -@name (or --@name) this QEMU was started with */
static const char *cpr_transfer_arg(const char *name)
{
    char **arg;

    for (arg = cpr_get_argv(); *arg && arg[1]; arg++) {
        const char *a = *arg + (arg[0][0] == '-' && arg[0][1] == '-');

        if (a[0] == '-' && !strcmp(a + 1, name)) {
            return arg[1];
        }
    }
    return NULL;
}

static void cpr_transfer_blockers(CprBlockerList ***tail)
{
    const char *display = cpr_transfer_arg("display");

    if (cpr_transfer_arg("pidfile")) {
        cpr_add_blocker(tail, CPR_MODE_TRANSFER, "pidfile",
                        "the new QEMU cannot lock the pid file this one "
                        "holds; start QEMU without -pidfile");
    }
    /*
     * Their listening sockets are not handed over, and the new QEMU
     * would bind them only after it has taken the VM
     */
    if (cpr_transfer_arg("vnc") || cpr_transfer_arg("spice") ||
        (display && (g_str_has_prefix(display, "vnc") ||
                     g_str_has_prefix(display, "spice")))) {
        cpr_add_blocker(tail, CPR_MODE_TRANSFER, "display",
                        "a VNC or SPICE server listens on sockets the new "
                        "QEMU cannot take over; use mode 'restart' without "
                        "'relay'");
    }
    cpr_ram_add_blockers(tail, CPR_MODE_TRANSFER);
}

/* What each descriptor of @fds is: its device and inode */
static GArray *cpr_transfer_fd_ids(GArray *fds)
{
    GArray *ids = g_array_new(false, true, sizeof(uint64_t) * 2);
    guint i;

    for (i = 0; i < fds->len; i++) {
        struct stat st = { 0 };
        uint64_t id[2];

        fstat(g_array_index(fds, int, i), &st);
        id[0] = st.st_dev;
        id[1] = st.st_ino;
        g_array_append_val(ids, id);
    }
    return ids;
}

/* Send every registered descriptor, in registry order */
static bool cpr_transfer_send_state(int fd, Error **errp)
{
    g_autoptr(GByteArray) state = cpr_state_serialize();
    g_autoptr(GArray) fds = cpr_state_outgoing_fds();

    if (!cpr_channel_send_state(fd, state, fds, errp)) {
        return false;
    }
    cpr_transfer_sent = g_steal_pointer(&state);
    cpr_transfer_sent_ids = cpr_transfer_fd_ids(fds);
    return true;
}

static void cpr_transfer_abandon(void)
{
    if (cpr_transfer_out >= 0) {
        close(cpr_transfer_out);
        cpr_transfer_out = -1;
    }
    g_clear_pointer(&cpr_transfer_sent, g_byte_array_unref);
    g_clear_pointer(&cpr_transfer_sent_ids, g_array_unref);
    cpr_relay_mark(false, false);
    cpr_run_keepers(false);
    cpr_notify(CPR_EVENT_TRANSFER_FAILED, NULL);
}

/* QEMU shuts down while cprsave waits for the new process: give up */
static void cpr_transfer_shutting_down(Notifier *n, void *data)
{
    if (cpr_transfer_waiting) {
        cpr_transfer_cancelled = true;
        cpr_channel_co_cancel(cpr_transfer_out, cpr_transfer_waiting);
    }
}

/* While the VM runs: the new process starts up with our descriptors */
static bool coroutine_fn cpr_transfer_prepare(const CprSaveArgs *args,
                                              Error **errp)
{
    ERRP_GUARD();

    cpr_transfer_images_lost = false;
    cpr_transfer_out = args->channel_fd >= 0 ? args->channel_fd :
                       args->relay ? cpr_relay_spawn(args->binary, errp) :
                       cpr_channel_connect(args->channel, errp);
    if (cpr_transfer_out < 0) {
        return false;
    }
    if (!cpr_notify(CPR_EVENT_TRANSFER, errp)) {
        cpr_notify(CPR_EVENT_TRANSFER_FAILED, NULL);
        close(cpr_transfer_out);
        cpr_transfer_out = -1;
        return false;
    }
    cpr_run_keepers(true);
    if (args->relay || args->channel_fd >= 0) {
        cpr_relay_mark(args->relay, true);
    }
    if (!cpr_transfer_send_state(cpr_transfer_out, errp)) {
        error_prepend(errp, "cannot hand the VM over to the new QEMU: ");
        goto fail;
    }
    trace_cpr_transfer_sent(args->channel);
    cpr_step("transfer-sent");
    if (!cpr_transfer_shutdown.notify) {
        cpr_transfer_shutdown.notify = cpr_transfer_shutting_down;
        qemu_register_shutdown_notifier(&cpr_transfer_shutdown);
    }
    cpr_transfer_cancelled = false;
    cpr_transfer_waiting = qemu_coroutine_self();
    cpr_channel_co_wait(cpr_transfer_out);
    cpr_transfer_waiting = NULL;
    if (cpr_transfer_cancelled) {
        error_setg(errp, "QEMU is shutting down");
        goto fail;
    }
    if (!cpr_channel_recv(cpr_transfer_out, CPR_MSG_READY, NULL, NULL,
                          errp)) {
        error_prepend(errp, "the new QEMU did not start: ");
        goto fail;
    }
    cpr_devices_prepare_save();
    return true;

fail:
    cpr_transfer_abandon();
    return false;
}

/* The VM is stopped and its state saved: hand it over */
static bool cpr_transfer_finish(const CprSaveArgs *args, Error **errp)
{
    g_autoptr(GByteArray) now = NULL;
    g_autoptr(GArray) fds = NULL, ids = NULL;
    Error *err = NULL;
    int tries;

    /* A client that connected or left since: the new process lacks it */
    cpr_run_keepers(true);
    now = cpr_state_serialize();
    fds = cpr_state_outgoing_fds();
    ids = cpr_transfer_fd_ids(fds);
    if (now->len != cpr_transfer_sent->len ||
        memcmp(now->data, cpr_transfer_sent->data, now->len) ||
        memcmp(ids->data, cpr_transfer_sent_ids->data,
               ids->len * g_array_get_element_size(ids))) {
        error_setg(errp, "what the new QEMU was given changed while it "
                   "started (a socket chardev's client came or went, or a "
                   "VFIO device's interrupts changed); try again");
        return false;
    }
    if (bdrv_inactivate_all() < 0) {
        error_setg(errp, "cannot hand over block devices");
        goto activate;
    }
    if (!cpr_channel_send(cpr_transfer_out, CPR_MSG_DEVICES,
                          args->state->data, args->state->len, NULL, 0,
                          errp)) {
        error_prepend(errp, "cannot hand the VM over to the new QEMU: ");
        goto activate;
    }
    cpr_step("transfer-devices-sent");
    if (!cpr_channel_recv(cpr_transfer_out, CPR_MSG_COMMIT, NULL, NULL,
                          errp)) {
        error_prepend(errp, "the new QEMU did not take the VM: ");
        goto activate;
    }
    /*
     * The new process owns the VM and everything this one kept: no
     * clean-up (it would unlink sockets, close images, run tap scripts).
     */
    trace_cpr_transfer_committed();
    if (args->relay) {
        cpr_relay_exec(cpr_transfer_out, args->binary);
    }
    _exit(0);

activate:
    /*
     * A new process that failed after it activated the images holds
     * their locks until it is gone, a little after it said why or after
     * its end of the socket closed
     */
    for (tries = 0; tries < 100; tries++) {
        error_free(err);
        err = NULL;
        bdrv_activate_all(&err);
        if (!err) {
            return false;
        }
        g_usleep(10 * 1000);
    }
    cpr_transfer_images_lost = true;
    error_append_hint(errp, "The VM stays paused: its images cannot be "
                      "taken back (%s).\n", error_get_pretty(err));
    error_free(err);
    return false;
}

static bool cpr_transfer_can_resume(void)
{
    return !cpr_transfer_images_lost;
}

/* New process: its failure before the commit, told to the old one */
static void G_GNUC_NORETURN cpr_transfer_refuse(Error *err)
{
    const char *why = error_get_pretty(err);

    error_report("cprsave transfer: the VM stays with the old QEMU: %s",
                 why);
    if (cpr_transfer_in >= 0) {
        cpr_channel_send(cpr_transfer_in, CPR_MSG_ERROR, why,
                         strlen(why), NULL, 0, NULL);
    }
    /* What this process took over belongs to the old one: no clean-up */
    _exit(1);
}

void cpr_transfer_incoming(const char *channel, Error **errp)
{
    ERRP_GUARD();
    int n;

    cpr_transfer_channel = g_strdup(channel);
    cpr_transfer_in = cpr_channel_accept(channel, errp);
    n = cpr_transfer_in < 0 ? -1 :
        cpr_channel_recv_state(cpr_transfer_in, true, errp);
    if (n < 0) {
        error_prepend(errp, "-incoming cpr:%s: no VM from the old QEMU: ",
                      channel);
        return;
    }
    cpr_relay_incoming();
    trace_cpr_transfer_received(channel, n);
}

/* New process, at the end of its start-up: take the VM */
static void cpr_transfer_started(void)
{
    g_autoptr(CprFile) cf = NULL;
    GByteArray *b = NULL;
    Error *err = NULL;

    if (!cpr_state_transferred()) {
        return;
    }
    cpr_devices_prepare_load();
    /* KVM's memory slots before the VM stops: the state changes a few */
    if (kvm_enabled()) {
        kvm_release_memory_slots();
    }
    if (!cpr_channel_send(cpr_transfer_in, CPR_MSG_READY, NULL, 0, NULL, 0,
                          &err)) {
        error_prepend(&err, "the old QEMU: ");
        cpr_transfer_refuse(err);
    }
    cpr_step("transfer-ready");
    /* The old QEMU now stops the VM and saves it: about a millisecond */
    cpr_channel_spin(cpr_transfer_in, CPR_TRANSFER_SPIN_NS);
    if (!cpr_channel_recv(cpr_transfer_in, CPR_MSG_DEVICES, &b, NULL,
                          &err)) {
        error_prepend(&err, "the old QEMU: ");
        cpr_transfer_refuse(err);
    }
    cf = cpr_file_parse(cpr_transfer_channel, b, &err);
    if (!cf || !cpr_load_state(CPR_MODE_TRANSFER, cf, &err)) {
        cpr_transfer_refuse(err);
    }
}

/* New process: the state is loaded, the images active: the commit point */
static void cpr_transfer_loaded(void)
{
    Error *err = NULL;
    GSList *deferred, *l;

    /* What cannot take its part of the VM here refuses it: VFIO mappings */
    if (!cpr_notify(CPR_EVENT_LOADED, &err)) {
        cpr_transfer_refuse(err);
    }
    if (!cpr_channel_send(cpr_transfer_in, CPR_MSG_COMMIT, NULL, 0, NULL, 0,
                          &err)) {
        /* The old process is gone: the VM is only here now */
        if (cpr_transfer_relaying()) {
            error_prepend(&err, "the process that started the relay did not "
                          "get its commit: ");
            cpr_transfer_back_err = err;
        } else {
            warn_reportf_err(err, "cprsave transfer: the old QEMU did not "
                             "get the commit, this process runs the VM: ");
        }
        err = NULL;
    } else {
        cpr_step("transfer-committed");
        if (cpr_transfer_relaying()) {
            /* The same socket takes the VM back to the old QEMU's PID */
            cpr_transfer_back = cpr_transfer_in;
            cpr_transfer_in = -1;
        }
    }
    if (cpr_transfer_in >= 0) {
        close(cpr_transfer_in);
    }
    cpr_transfer_in = -1;
    trace_cpr_transfer_committed();

    /* This process has the VM: what waited for it goes on */
    deferred = g_steal_pointer(&cpr_transfer_deferred);
    for (l = deferred; l; l = l->next) {
        CprDeferred *d = l->data;

        d->fn(d->opaque);
    }
    g_slist_free_full(deferred, g_free);
}

/* New process: the VM runs here */
static void cpr_transfer_load_done(void)
{
    cpr_ram_load_done();
    cpr_state_incoming_done();
    if (cpr_transfer_relaying()) {
        cpr_relay_loaded(cpr_transfer_back, cpr_transfer_back_err);
        cpr_transfer_back = -1;
        cpr_transfer_back_err = NULL;
    }
}

bool cpr_transfer_defer(CprDeferFn *fn, void *opaque)
{
    CprDeferred *d;

    if (!cpr_state_transferred() || !cpr_is_incoming()) {
        return false;
    }
    d = g_new0(CprDeferred, 1);
    d->fn = fn;
    d->opaque = opaque;
    cpr_transfer_deferred = g_slist_append(cpr_transfer_deferred, d);
    return true;
}

const CprModeOps cpr_transfer_ops = {
    .mode = CPR_MODE_TRANSFER,
    .stop_state = RUN_STATE_SAVE_VM,
    .resume_on_error = true,
    .has_channel = true,
    .blockers = cpr_transfer_blockers,
    .prepare = cpr_transfer_prepare,
    .finish = cpr_transfer_finish,
    .abandon = cpr_transfer_abandon,
    .can_resume = cpr_transfer_can_resume,
    .ram_kept = true,
    .loaded = cpr_transfer_loaded,
    .obeys_autostart = true,
    .load_done = cpr_transfer_load_done,
    .started = cpr_transfer_started,
    .other_mode_hint = "; this process takes a VM over from another with "
                       "mode 'transfer'",
};
