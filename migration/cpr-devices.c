/*
 * CPR: the device and CPU state stream that every mode saves and loads
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Every CPR mode saves the device and CPU state of a stopped VM the same
 * way: qemu_save_device_state() into a memory buffer, which the mode then
 * writes into its state file or keeps in memory (snapshot).  Loading is
 * qemu_loadvm_device_sections() over that buffer (device sections only),
 * then the CPUs' state put back into the accelerator, its time measured
 * apart.
 *
 * CPR's own records (the state file's header, the registry of kept
 * descriptors) are vmstate in memory buffers too, written and read here.
 */

#include "qemu/osdep.h"
#include "exec/memory.h"
#include "qemu/bswap.h"
#include "qemu/main-loop.h"
#include "qemu/timer.h"
#include "qemu/units.h"
#include "qapi/error.h"
#include "block/block.h"
#include "hw/boards.h"
#include "io/channel-buffer.h"
#include "sysemu/cpus.h"
#include "sysemu/kvm.h"
#include "sysemu/reset.h"
#include "sysemu/runstate.h"
#include "sysemu/tcg.h"
#include "migration/qemu-file.h"
#include "migration/vmstate.h"
#include "migration/savevm.h"
#include "migration/migration.h"
#include "migration/global_state.h"
#include "cpr-internal.h"
#include "trace.h"

void cpr_vmstate_save(const VMStateDescription *vmsd, void *opaque,
                      GByteArray *b)
{
    QIOChannelBuffer *bioc = qio_channel_buffer_new(4 * KiB);
    QEMUFile *f = qemu_file_new_output(QIO_CHANNEL(bioc));
    int ret;

    ret = vmstate_save_state(f, vmsd, opaque, NULL);
    /* CPR's records have no pre_save that could fail */
    assert(!ret);
    /* Ends the record: loading its last subsections never reads past it */
    qemu_put_byte(f, QEMU_VM_EOF);
    qemu_fflush(f);
    g_byte_array_append(b, bioc->data, bioc->usage);
    qemu_fclose(f);
    object_unref(OBJECT(bioc));
}

/* Device state is a few hundred KiB at most (e1000 is 200) */
#define CPR_DEVICES_BUF (256 * KiB)

QEMUFile *cpr_buffer_input(const uint8_t *data, size_t len)
{
    QIOChannelBuffer *bioc = qio_channel_buffer_new(0);
    QEMUFile *f;

    /* Only read: the channel's buffer until cpr_buffer_input_close() */
    bioc->data = (uint8_t *)data;
    bioc->capacity = bioc->usage = len;
    f = qemu_file_new_input(QIO_CHANNEL(bioc));
    object_unref(OBJECT(bioc));         /* the file holds it */
    return f;
}

void cpr_buffer_input_close(QEMUFile *f)
{
    QIOChannelBuffer *bioc = QIO_CHANNEL_BUFFER(qemu_file_get_ioc(f));

    /* The caller's, not to be freed by the channel's close */
    bioc->data = NULL;
    bioc->capacity = bioc->usage = bioc->offset = 0;
    qemu_fclose(f);
}

bool cpr_vmstate_load(const VMStateDescription *vmsd, void *opaque,
                      const uint8_t *data, size_t len)
{
    QEMUFile *f = cpr_buffer_input(data, len);
    int ret;

    ret = vmstate_load_state(f, vmsd, opaque, vmsd->version_id);
    if (!ret && (qemu_get_byte(f) != QEMU_VM_EOF || qemu_file_get_error(f))) {
        ret = -EINVAL;
    }
    cpr_buffer_input_close(f);
    return ret == 0;
}

bool cpr_vmstate_string_ok(const void *s, uint32_t len)
{
    return len && s && !((const char *)s)[len - 1] &&
           strlen(s) == len - 1;
}

bool cpr_stop(RunState state, Error **errp)
{
    global_state_store();
    if (!runstate_is_running()) {
        /* What vm_stop() does to block devices, the run state left alone */
        bdrv_drain_all();
    }
    if (runstate_is_running() ? vm_stop(state) : bdrv_flush_all()) {
        error_setg(errp, "cannot flush block devices before saving");
        return false;
    }
    return true;
}

/*
 * The buffers the next save writes into, made by cpr_devices_prepare_save:
 * the device state, and the envelope around it (or the envelope received)
 */
static QIOChannelBuffer *cpr_save_bioc;
static GByteArray *cpr_save_envelope;
#define CPR_ENVELOPE_BUF (CPR_DEVICES_BUF + 16 * KiB)

void cpr_devices_prepare_save(void)
{
    /* Their pages are faulted in now, not while the VM is stopped */
    if (!cpr_save_bioc) {
        cpr_save_bioc = qio_channel_buffer_new(CPR_DEVICES_BUF);
        memset(cpr_save_bioc->data, 0, CPR_DEVICES_BUF);
    }
    if (!cpr_save_envelope) {
        cpr_save_envelope = g_byte_array_sized_new(CPR_ENVELOPE_BUF);
        memset(cpr_save_envelope->data, 0, CPR_ENVELOPE_BUF);
    }
}

GByteArray *cpr_devices_buffer(size_t size)
{
    if (cpr_save_envelope && size <= CPR_ENVELOPE_BUF) {
        return g_steal_pointer(&cpr_save_envelope);
    }
    return g_byte_array_sized_new(size);
}

void cpr_devices_prepare_load(void)
{
    /* The first use of a buffer channel and an input file */
    cpr_buffer_input_close(cpr_buffer_input((const uint8_t *)"", 1));
}

GByteArray *cpr_save_devices(Error **errp)
{
    return cpr_save_devices_some(NULL, NULL, true, errp);
}

GByteArray *cpr_save_devices_some(bool (*want)(void *opaque, void *arg),
                                  void *arg, bool sync_cpus, Error **errp)
{
    /* A stream with CPUs is the VM's, a few devices' fit in a small one */
    QIOChannelBuffer *bioc = (sync_cpus ? g_steal_pointer(&cpr_save_bioc)
                                        : NULL) ?:
        qio_channel_buffer_new(sync_cpus ? CPR_DEVICES_BUF : 4 * KiB);
    QEMUFile *f = qemu_file_new_output(QIO_CHANNEL(bioc));
    GByteArray *b = NULL;
    int ret;

    if (sync_cpus) {
        cpu_synchronize_all_states();
    }
    ret = qemu_save_device_state_some(f, want, arg);
    qemu_fflush(f);
    if (!ret) {
        ret = qemu_file_get_error(f);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "cannot save device state");
    } else {
        /* The channel's buffer becomes the result: no copy, no free */
        b = g_byte_array_new_take(g_steal_pointer(&bioc->data), bioc->usage);
        bioc->capacity = bioc->usage = bioc->offset = 0;
    }
    qemu_fclose(f);
    object_unref(OBJECT(bioc));
    return b;
}

/* A load failed after some devices had taken their part of the stream */
static bool cpr_devices_half_loaded;

void cpr_load_devices_prepare(void)
{
    if (cpr_devices_half_loaded) {
        /*
         * As at start-up: devices that loaded state (and mapped regions,
         * started timers) go back to their reset state before the next
         * load.  VFIO devices kept by cprsave restart skip their reset.
         */
        trace_cpr_load_devices_reset();
        qemu_system_reset(SHUTDOWN_CAUSE_NONE);
        cpr_devices_half_loaded = false;
    }
}

/* A restore in this process (cpr_restore_machine()) is under way */
static bool cpr_restoring_now;

bool cpr_restoring(void)
{
    return cpr_restoring_now;
}

/*
 * Load the sections of the device state stream @data, within a memory
 * transaction that the caller made; false if the stream is not one or a
 * device refused its state.
 */
static bool cpr_devices_header_ok(const uint8_t *data, size_t len,
                                  Error **errp)
{
    if (len < 8 || ldl_be_p(data) != QEMU_VM_FILE_MAGIC ||
        ldl_be_p(data + 4) != QEMU_VM_FILE_VERSION) {
        error_setg(errp, "the device state has no valid header");
        return false;
    }
    return true;
}

static int cpr_load_sections(const uint8_t *data, size_t len, Error **errp)
{
    QEMUFile *f;
    int ret;

    if (!cpr_devices_header_ok(data, len, errp)) {
        return -EINVAL;
    }
    f = cpr_buffer_input(data + 8, len - 8);
    ret = qemu_loadvm_device_sections(f, migration_incoming_get_current());
    if (ret < 0) {
        cpr_devices_half_loaded = true;
        error_setg(errp, "cannot load device state (%s); see the error "
                   "log for the device that refused it", strerror(-ret));
    }
    cpr_buffer_input_close(f);
    return ret;
}

/*
 * Load @data's sections: with @replay, by replaying *@plan; else from the
 * stream, recording into *@plan (a new plan) if @plan is not NULL.  A
 * plan that cannot be used is dropped; a replay that fails leaves the
 * devices half loaded.
 */
static bool cpr_load_planned(const uint8_t *data, size_t len, CprPlan **plan,
                             bool replay, Error **errp)
{
    bool ok;

    if (replay) {
        ok = cpr_plan_replay(*plan, errp);
        if (!ok) {
            cpr_devices_half_loaded = true;
        }
        return ok;
    }
    if (!plan || !*plan) {
        return cpr_load_sections(data, len, errp) >= 0;
    }
    cpr_plan_record_start(*plan, data + 8, len - 8);
    ok = cpr_load_sections(data, len, errp) >= 0;
    if (!cpr_plan_record_end(*plan, ok)) {
        trace_cpr_plan_unusable();
        g_clear_pointer(plan, cpr_plan_free);
    }
    return ok;
}

/*
 * Reset the machine for a load: by replaying the reset @plan recorded if
 * it has one (@replay), else as usual, recording it into @plan
 */
static void cpr_reset_planned(CprPlan *plan, bool replay)
{
    MachineClass *mc = MACHINE_GET_CLASS(current_machine);
    /*
     * Only where all that the machine's reset does goes through what a
     * recorder sees: pc and q35 under TCG (qemu_devices_reset(), then each
     * APIC's reset; under KVM the CPUs' reset also calls into KVM)
     */
    bool recordable = tcg_enabled() &&
        object_dynamic_cast(OBJECT(current_machine), "generic-pc-machine");

    if (replay && cpr_plan_reset_usable(plan)) {
        cpr_plan_reset_replay(plan);
        return;
    }
    if (plan && recordable) {
        cpr_plan_reset_record_start(plan);
    }
    if (mc->reset) {
        mc->reset(current_machine, SHUTDOWN_CAUSE_SNAPSHOT_LOAD);
    } else {
        qemu_devices_reset(SHUTDOWN_CAUSE_SNAPSHOT_LOAD);
    }
    if (plan && recordable) {
        cpr_plan_reset_record_end(plan);
    }
}

static bool cpr_load_devices_planned(const uint8_t *data, size_t len,
                                     CprPlan **plan, bool replay,
                                     int64_t *cpu_ns, Error **errp);

bool cpr_restore_machine(const uint8_t *data, size_t len,
                         CprRestoreRamFn *ram, void *opaque,
                         CprExclude *exclude, CprPlan **plan,
                         CprRestoreTimes *t, Error **errp)
{
    g_autoptr(GByteArray) kept = NULL;
    int64_t t0 = get_clock(), t1, t2, t3, t4, t5;
    Error *err = NULL;
    bool ok, replay;

    /*
     * The devices whose state goes on: saved now, loaded after the rest,
     * into the machine fresh from reset, as an incoming migration would.
     */
    if (cpr_exclude_has_devices(exclude)) {
        kept = cpr_exclude_save_kept(exclude, errp);
        if (!kept) {
            return false;
        }
    }

    /*
     * Devices load their state as if into a machine fresh from reset (as
     * for loadvm and an incoming migration).  ROMs are not copied into
     * RAM again (cpr_restoring()): @ram puts back what the guest changed,
     * ROMs included.  A reset handler may still write guest RAM: RAM is
     * put back after the reset, then the devices load and see it.  No
     * flush of all translated code either: @ram drops the code of each
     * page it puts back.  Loading may write guest RAM too (under KVM, the
     * kvmclock MSRs make KVM write the clock structures): @ram is called
     * again after the load.  One memory transaction for it all: the
     * memory map changes of the reset and the load are applied once.
     * Likewise the main loop is told once that timers or bottom halves
     * changed (a reset and a load rearm the PIT's and the HPET's timers
     * several times), so that it does not wake up in the middle to wait
     * for the BQL.
     */
    if (!current_machine->cpr_restore_plan) {
        plan = NULL;
    }
    replay = plan && *plan && cpr_plan_usable(*plan);
    if (plan && *plan && cpr_plan_given_up(*plan)) {
        plan = NULL;
    } else if (plan && !replay) {
        /* What this restore does becomes the plan of the next ones */
        g_clear_pointer(plan, cpr_plan_free);
        *plan = cpr_plan_new();
    }
    memory_region_transaction_begin_restore();
    qemu_notify_event_defer();
    cpr_restoring_now = true;
    t1 = get_clock();
    cpr_reset_planned(plan ? *plan : NULL, replay);
    t2 = get_clock();
    t->pages = ram(opaque, false);
    t3 = get_clock();
    ok = cpr_load_devices_planned(data, len, plan, replay, &t->cpu_ns, &err);
    t->replayed = ok && replay;
    if (t->replayed) {
        cpr_plan_set_failures(*plan, 0);
    }
    if (!ok && replay) {
        /* Once more from the stream, into a machine reset again */
        unsigned failures = cpr_plan_failures(*plan) + 1;

        trace_cpr_plan_replay_failed(error_get_pretty(err));
        g_clear_pointer(&err, error_free);
        g_clear_pointer(plan, cpr_plan_free);
        *plan = cpr_plan_new();
        cpr_plan_set_failures(*plan, failures);
        cpr_reset_planned(*plan, false);
        cpr_devices_half_loaded = false;
        t->pages += ram(opaque, false);
        ok = cpr_load_devices_planned(data, len, plan, false, &t->cpu_ns,
                                      &err);
    }
    if (!ok) {
        error_propagate(errp, err);
    }
    if (ok && kept) {
        ok = cpr_load_sections(kept->data, kept->len, errp) >= 0;
    }
    t4 = get_clock();
    t->pages += ram(opaque, true);
    cpr_restoring_now = false;
    t5 = get_clock();
    memory_region_transaction_commit();
    qemu_notify_event_resume();
    t->reset_ns = t2 - t1;
    t->ram_ns = (t3 - t2) + (t5 - t4);
    t->devices_ns = (t2 - t0) + (t4 - t3) - t->cpu_ns + (get_clock() - t5);
    return ok;
}

bool cpr_load_devices(const uint8_t *data, size_t len, int64_t *cpu_ns,
                      Error **errp)
{
    return cpr_load_devices_planned(data, len, NULL, false, cpu_ns, errp);
}

static bool cpr_load_devices_planned(const uint8_t *data, size_t len,
                                     CprPlan **plan, bool replay,
                                     int64_t *cpu_ns, Error **errp)
{
    int64_t t;
    bool ok;

    if (!cpr_devices_header_ok(data, len, errp)) {
        return false;
    }
    cpu_synchronize_all_pre_loadvm();
    /*
     * As qemu_load_device_state(), timing the CPUs' own part, in one
     * batched memory transaction: the memory map changes of all devices
     * are applied once, not device after device, except where a device's
     * post_load reads guest memory through the map the devices before it
     * set up (AHCI's FIS buffer, virtio's rings).
     */
    memory_region_transaction_begin_batched();
    ok = cpr_load_planned(data, len, plan, replay, errp);
    memory_region_transaction_commit_batched();
    /*
     * A process that took a VM over has KVM's memory map held until now
     * (kvm_hold_memory_map()): the CPUs' registers may point into guest
     * memory (kvmclock, PV EOI, async page faults)
     */
    if (kvm_enabled()) {
        kvm_release_memory_map();
    }
    if (!ok) {
        return false;
    }
    t = get_clock();
    cpu_synchronize_all_post_init();
    if (cpu_ns) {
        *cpu_ns = get_clock() - t;
    }
    return true;
}

/*
 * The stream is the file magic and version, then sections: type byte
 * QEMU_VM_SECTION_FULL, section id, name (length byte + bytes), instance
 * id, version id, the fields, and a footer (QEMU_VM_SECTION_FOOTER +
 * section id).  Fields have no length, so a section ends at the first
 * footer for its id; good enough to name where two streams differ.
 */
char *cpr_devices_section_at(const uint8_t *data, size_t len, size_t at)
{
    char name[256] = "header";
    size_t pos = 8;

    while (pos + 6 <= len && data[pos] == QEMU_VM_SECTION_FULL) {
        uint8_t footer[5] = { QEMU_VM_SECTION_FOOTER };
        size_t nlen = data[pos + 5], end;
        const uint8_t *f;

        if (pos + 6 + nlen + 8 > len) {
            break;
        }
        memcpy(footer + 1, data + pos + 1, 4);
        memcpy(name, data + pos + 6, nlen);
        name[nlen] = 0;
        pos += 6 + nlen + 8;
        f = memmem(data + pos, len - pos, footer, sizeof(footer));
        end = f ? f - data + sizeof(footer) : len;
        if (at < end) {
            return g_strdup(name);
        }
        pos = end;
    }
    return g_strdup(at < pos ? name : "end of stream");
}
