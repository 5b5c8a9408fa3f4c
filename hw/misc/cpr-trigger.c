/*
 * cpr-trigger: a PCI device through which the guest takes and restores
 * CPR snapshots (fuzzing), at a precise instruction
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * BAR 0 (4 KiB of MMIO, 32-bit registers):
 *
 *   0x00 MAGIC     read-only, "CPRT"
 *   0x04 COMMAND   write CPR_TRIGGER_SNAPSHOT: take a snapshot here;
 *                  write CPR_TRIGGER_RESTORE: this iteration is over,
 *                  restore the snapshot.  Either completes before the
 *                  guest executes its next instruction.
 *   0x08 STATUS    read-only, what the last command did (CPR_TRIGGER_ST_*)
 *   0x0c RESULT    read-write, a word for the host about the iteration
 *   0x10 RESTORES  read-only, restores done since the snapshot
 *
 * After a snapshot, execution goes on after the COMMAND write with STATUS
 * CPR_TRIGGER_ST_TAKEN; after each restore, execution goes on after that
 * same write again, with STATUS CPR_TRIGGER_ST_RESTORED.  The snapshot
 * leaves the memory backend named by the "exclude" property alone.
 *
 * With a "chardev" (the host's doorbell, a socket), a restore request is
 * first told to the host: QEMU sends 8 bytes, CPR_TRIGGER_MSG_DONE and
 * RESULT as two little-endian 32-bit words, and waits with the guest
 * stopped until the host, having read the results and written the next
 * input into the excluded memory, sends the byte CPR_TRIGGER_MSG_RESTORE.
 * No JSON is parsed per iteration.
 *
 * How a command completes before the next instruction: the vCPU that
 * wrote COMMAND stops at once and the work is done in the main loop.
 * Under TCG the vCPU stops at the COMMAND write itself, which it executes
 * again when it resumes; the device lets that second write through
 * (replay).  Under KVM the write completes before the vCPU stops.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-builtin-types.h"
#include "qemu/error-report.h"
#include "qemu/main-loop.h"
#include "qemu/units.h"
#include "qemu/module.h"
#include "chardev/char-fe.h"
#include "exec/exec-all.h"
#include "hw/pci/pci.h"
#include "hw/qdev-properties.h"
#include "hw/qdev-properties-system.h"
#include "migration/cpr.h"
#include "migration/vmstate.h"
#include "qom/object.h"
#include "sysemu/cpu-timers.h"
#include "sysemu/runstate.h"
#include "sysemu/tcg.h"
#include "trace.h"

#define TYPE_CPR_TRIGGER "cpr-trigger"
OBJECT_DECLARE_SIMPLE_TYPE(CprTriggerState, CPR_TRIGGER)

#define CPR_TRIGGER_MAGIC           0x54525043  /* "CPRT" */
#define CPR_TRIGGER_REG_MAGIC       0x00
#define CPR_TRIGGER_REG_COMMAND     0x04
#define CPR_TRIGGER_REG_STATUS      0x08
#define CPR_TRIGGER_REG_RESULT      0x0c
#define CPR_TRIGGER_REG_RESTORES    0x10

#define CPR_TRIGGER_SNAPSHOT        1
#define CPR_TRIGGER_RESTORE         2

#define CPR_TRIGGER_ST_NONE         0
#define CPR_TRIGGER_ST_TAKEN        1
#define CPR_TRIGGER_ST_RESTORED     2
#define CPR_TRIGGER_ST_FAILED       0xe0000001  /* see QEMU's error log */
#define CPR_TRIGGER_ST_NO_SNAPSHOT  0xe0000002
#define CPR_TRIGGER_ST_BAD_COMMAND  0xe0000003

#define CPR_TRIGGER_MSG_DONE        1
#define CPR_TRIGGER_MSG_RESTORE     'r'

struct CprTriggerState {
    PCIDevice parent_obj;
    MemoryRegion mmio;
    CharBackend doorbell;
    char *exclude;              /* memory backend id, or NULL */

    uint32_t status;
    uint32_t result;
    /* The next COMMAND write completes an interrupted one (TCG). */
    bool replay;

    uint32_t pending;           /* command for the main loop */
    CPUState *cpu;              /* the vCPU that wrote it, stopped */
    bool waiting;               /* for the host's go */

    bool in_vcpu;               /* restores in the vCPU's thread if it can */
    uint64_t restores_in_vcpu;  /* ... done there */
};

static uint64_t cpr_trigger_read(void *opaque, hwaddr addr, unsigned size)
{
    CprTriggerState *s = opaque;

    switch (addr) {
    case CPR_TRIGGER_REG_MAGIC:
        return CPR_TRIGGER_MAGIC;
    case CPR_TRIGGER_REG_STATUS:
        return s->status;
    case CPR_TRIGGER_REG_RESULT:
        return s->result;
    case CPR_TRIGGER_REG_RESTORES:
        return cpr_snapshot_restores();
    }
    return 0;
}

static void cpr_trigger_resume_cpu(CprTriggerState *s)
{
    if (s->cpu && runstate_is_running()) {
        cpu_resume(s->cpu);
    }
    s->cpu = NULL;
}

static void cpr_trigger_restore(CprTriggerState *s)
{
    Error *err = NULL;

    if (!cpr_snapshot_exists()) {
        s->status = CPR_TRIGGER_ST_NO_SNAPSHOT;
    } else if (!cpr_snapshot_restore(false, false, &err)) {
        error_report_err(err);
        s->status = CPR_TRIGGER_ST_FAILED;
    }
    /* else the loaded state says RESTORED, and replay under TCG */
    trace_cpr_trigger_restore(s->status);
    cpr_trigger_resume_cpu(s);
}

static void cpr_trigger_snapshot(CprTriggerState *s)
{
    g_autoptr(strList) exclude = NULL;
    Error *err = NULL;

    if (s->exclude) {
        QAPI_LIST_PREPEND(exclude, g_strdup(s->exclude));
    }
    /* As the snapshot will have it when restored */
    s->status = CPR_TRIGGER_ST_RESTORED;
    if (cpr_snapshot_take(NULL, exclude, false, false, &err)) {
        s->status = CPR_TRIGGER_ST_TAKEN;
    } else {
        error_report_err(err);
        s->status = CPR_TRIGGER_ST_FAILED;
    }
    trace_cpr_trigger_snapshot(s->status);
    cpr_trigger_resume_cpu(s);
}

/* In the main loop: the command the guest wrote */
static void cpr_trigger_bh(void *opaque)
{
    CprTriggerState *s = opaque;
    uint32_t msg[2];

    switch (s->pending) {
    case CPR_TRIGGER_SNAPSHOT:
        cpr_trigger_snapshot(s);
        break;
    case CPR_TRIGGER_RESTORE:
        if (!qemu_chr_fe_backend_open(&s->doorbell)) {
            cpr_trigger_restore(s);
            break;
        }
        msg[0] = cpu_to_le32(CPR_TRIGGER_MSG_DONE);
        msg[1] = cpu_to_le32(s->result);
        s->waiting = true;
        if (qemu_chr_fe_write_all(&s->doorbell, (uint8_t *)msg,
                                  sizeof(msg)) != sizeof(msg)) {
            warn_report("cpr-trigger: the host's doorbell is gone; "
                        "restoring without it");
            s->waiting = false;
            cpr_trigger_restore(s);
        }
        break;
    }
}

static int cpr_trigger_can_read(void *opaque)
{
    return 1;
}

/* The host's doorbell */
static void cpr_trigger_receive(void *opaque, const uint8_t *buf, int size)
{
    CprTriggerState *s = opaque;
    int i;

    for (i = 0; i < size; i++) {
        if (buf[i] != CPR_TRIGGER_MSG_RESTORE) {
            warn_report("cpr-trigger: unknown doorbell byte 0x%02x",
                        buf[i]);
        } else if (s->waiting) {
            s->waiting = false;
            cpr_trigger_restore(s);
        } else {
            warn_report("cpr-trigger: restore rung while no iteration "
                        "was done");
        }
    }
}

/*
 * Under TCG, with one vCPU and no doorbell to wait on, a restore is done
 * right here, in the thread of the vCPU that asked for it, which holds
 * the BQL: no trip to the main loop and back, no pause of the VM.  The
 * vCPU then leaves the translated code it was running and goes on from
 * the snapshot's state (the snapshot's COMMAND write, replayed).  A
 * failed restore asks the main loop to pause the VM, as a failure there
 * would leave it.
 */
static void cpr_trigger_restore_here(CprTriggerState *s, CPUState *cpu)
{
#ifdef CONFIG_TCG
    uintptr_t io_pc = cpu->mem_io_pc;   /* the restore resets the CPU */
    Error *err = NULL;
    bool started;

    if (!s->in_vcpu || !tcg_enabled() || icount_enabled() ||
        CPU_NEXT(first_cpu) || !runstate_is_running() || cpu->stop ||
        qemu_chr_fe_backend_open(&s->doorbell) || !cpr_snapshot_exists()) {
        return;
    }
    if (cpr_snapshot_restore_in_vcpu(&started, &err)) {
        s->restores_in_vcpu++;
        trace_cpr_trigger_restore(s->status);
        /*
         * Back to the top of the vCPU's loop, which looks at the state
         * loaded (a snapshot of a halted vCPU stays halted)
         */
        if (cpu->exception_index < 0) {
            cpu->exception_index = EXCP_INTERRUPT;
        }
        cpu_loop_exit(cpu);
    }
    if (!started) {
        /* Refused, nothing changed: the main loop refuses it as usual */
        error_free(err);
        return;
    }
    error_report_err(err);
    s->status = CPR_TRIGGER_ST_FAILED;
    trace_cpr_trigger_restore(s->status);
    vm_stop(RUN_STATE_PAUSED);
    s->replay = true;
    cpu_loop_exit_restore(cpu, io_pc);
#endif
}

static void cpr_trigger_write(void *opaque, hwaddr addr, uint64_t val,
                              unsigned size)
{
    CprTriggerState *s = opaque;

    switch (addr) {
    case CPR_TRIGGER_REG_RESULT:
        s->result = val;
        return;
    case CPR_TRIGGER_REG_COMMAND:
        break;
    default:
        return;
    }
    if (s->replay) {
        /* The write a snapshot or restore stopped at, executed again */
        s->replay = false;
        return;
    }
    if (val != CPR_TRIGGER_SNAPSHOT && val != CPR_TRIGGER_RESTORE) {
        s->status = CPR_TRIGGER_ST_BAD_COMMAND;
        return;
    }
    if (!current_cpu || s->cpu) {
        s->status = CPR_TRIGGER_ST_FAILED;
        return;
    }
    trace_cpr_trigger_command(val);
    if (val == CPR_TRIGGER_RESTORE) {
        cpr_trigger_restore_here(s, current_cpu);
    }
    s->pending = val;
    s->cpu = current_cpu;
    aio_bh_schedule_oneshot(qemu_get_aio_context(), cpr_trigger_bh, s);
    /* Stop this vCPU before its next instruction. */
    s->cpu->stop = true;
    cpu_exit(s->cpu);
#ifdef CONFIG_TCG
    if (tcg_enabled()) {
        s->replay = true;
        cpu_loop_exit_restore(s->cpu, s->cpu->mem_io_pc);
    }
#endif
}

static const MemoryRegionOps cpr_trigger_ops = {
    .read = cpr_trigger_read,
    .write = cpr_trigger_write,
    .endianness = DEVICE_LITTLE_ENDIAN,
    .valid = {
        .min_access_size = 4,
        .max_access_size = 4,
    },
};

static void cpr_trigger_realize(PCIDevice *pdev, Error **errp)
{
    CprTriggerState *s = CPR_TRIGGER(pdev);

    memory_region_init_io(&s->mmio, OBJECT(s), &cpr_trigger_ops, s,
                          "cpr-trigger-mmio", 4 * KiB);
    /* A command leaves the write behind (TCG): no re-entrancy here. */
    s->mmio.disable_reentrancy_guard = true;
    pci_register_bar(pdev, 0, PCI_BASE_ADDRESS_SPACE_MEMORY, &s->mmio);
    object_property_add_uint64_ptr(OBJECT(s), "restores-in-vcpu",
                                   &s->restores_in_vcpu, OBJ_PROP_FLAG_READ);
    qemu_chr_fe_set_handlers(&s->doorbell, cpr_trigger_can_read,
                             cpr_trigger_receive, NULL, NULL, s, NULL,
                             true);
}

static void cpr_trigger_reset(DeviceState *dev)
{
    CprTriggerState *s = CPR_TRIGGER(dev);

    s->status = CPR_TRIGGER_ST_NONE;
    s->result = 0;
    s->replay = false;
}

static void cpr_trigger_exit(PCIDevice *pdev)
{
    CprTriggerState *s = CPR_TRIGGER(pdev);

    qemu_chr_fe_deinit(&s->doorbell, false);
}

static const VMStateDescription vmstate_cpr_trigger = {
    .name = TYPE_CPR_TRIGGER,
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = (VMStateField[]) {
        VMSTATE_PCI_DEVICE(parent_obj, CprTriggerState),
        VMSTATE_UINT32(status, CprTriggerState),
        VMSTATE_UINT32(result, CprTriggerState),
        VMSTATE_BOOL(replay, CprTriggerState),
        VMSTATE_END_OF_LIST()
    }
};

static Property cpr_trigger_properties[] = {
    DEFINE_PROP_STRING("exclude", CprTriggerState, exclude),
    DEFINE_PROP_CHR("chardev", CprTriggerState, doorbell),
    DEFINE_PROP_BOOL("restore-in-vcpu", CprTriggerState, in_vcpu, true),
    DEFINE_PROP_END_OF_LIST(),
};

static void cpr_trigger_class_init(ObjectClass *klass, void *data)
{
    DeviceClass *dc = DEVICE_CLASS(klass);
    PCIDeviceClass *k = PCI_DEVICE_CLASS(klass);

    k->realize = cpr_trigger_realize;
    k->exit = cpr_trigger_exit;
    k->vendor_id = PCI_VENDOR_ID_QEMU;
    k->device_id = 0xc970;
    k->revision = 1;
    k->class_id = PCI_CLASS_OTHERS;
    dc->desc = "CPR snapshot trigger (guest-driven snapshot/restore)";
    dc->vmsd = &vmstate_cpr_trigger;
    dc->reset = cpr_trigger_reset;
    device_class_set_props(dc, cpr_trigger_properties);
    set_bit(DEVICE_CATEGORY_MISC, dc->categories);
}

static const TypeInfo cpr_trigger_info = {
    .name          = TYPE_CPR_TRIGGER,
    .parent        = TYPE_PCI_DEVICE,
    .instance_size = sizeof(CprTriggerState),
    .class_init    = cpr_trigger_class_init,
    .interfaces = (InterfaceInfo[]) {
        { INTERFACE_CONVENTIONAL_PCI_DEVICE },
        { },
    },
};

static void cpr_trigger_register_types(void)
{
    type_register_static(&cpr_trigger_info);
}

type_init(cpr_trigger_register_types)
