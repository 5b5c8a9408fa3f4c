/*
 * CPR: the reset steps a snapshot restore leaves out
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A restore resets the machine, then loads the snapshot's device state
 * into it.  For some devices the reset is redundant: every field it
 * writes, the load writes again whatever its value before (not in a
 * subsection that may be left out of the stream), or the guest cannot
 * change; it has no effect outside the device but on interrupt lines,
 * whose receivers load their state too; and what it does to timers and
 * memory regions, the load or the device's post_load does again.  A
 * recorded reset (cpr-restore-plan.c) keeps no step of those devices,
 * so replays leave them out.
 *
 * Devices are named by their exact QOM type: a subclass may add state.
 * The devices of pc and q35 that keep their reset, and why, are listed
 * in docs/cpr.rst ("What a restore leaves out of the machine reset").
 */

#include "qemu/osdep.h"
#include "qom/object.h"
#include "cpr-internal.h"

typedef struct CprResetRedundant {
    const char *type;
    /* Unless NULL, whether it is redundant for @obj, for good */
    bool (*when)(Object *obj);
} CprResetRedundant;

/* The keyboard controller's throttle timer is not in its state */
static bool cpr_i8042_unthrottled(Object *obj)
{
    return !object_property_get_bool(obj, "kbd-throttle", NULL);
}

static const CprResetRedundant cpr_reset_redundant[] = {
    { "ioapic" },               /* id, ioregsel, irr, redirection table */
    { "isa-i8259" },            /* all of it; the output line is loaded */
    { "isa-pit" },              /* the channels; post_load rearms the timer */
    { "i8042", cpr_i8042_unthrottled },  /* mode, status, pending, outport */
    { "vmmouse" },              /* post_load redoes the mouse handler */
    { "port92" },               /* outport */
    { "fw_cfg_io" },            /* the entry and offset selected */
    { "fw_cfg_mem" },
    { "ivshmem-plain" },        /* interrupt status and mask */
    { "cpr-trigger" },          /* status, result, replay */
};

bool cpr_reset_step_redundant(const ResetStep *step, const char **type)
{
    const char *name;
    size_t i;

    /* A handler's opaque is not always an object */
    if (step->kind == RESET_STEP_HANDLER) {
        return false;
    }
    name = object_get_typename(step->opaque);
    for (i = 0; i < ARRAY_SIZE(cpr_reset_redundant); i++) {
        const CprResetRedundant *r = &cpr_reset_redundant[i];

        if (!strcmp(name, r->type) && (!r->when || r->when(step->opaque))) {
            *type = r->type;
            return true;
        }
    }
    return false;
}
