/*
 * CPR snapshot: what its restores leave as it is
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A fuzzer passes inputs and results through memory the snapshot must not
 * put back, and may talk to the VM through a device whose state must go
 * on across restores (ivshmem-doorbell: its interrupt mask and status,
 * its MSI-X vectors).  The user names them:
 *
 *  - a memory backend (share=on): its RAM block is not copied nor put
 *    back;
 *  - a device (qdev id or QOM path): neither are its RAM blocks, nor
 *    those of the devices on its buses; and its state, with theirs, is
 *    not in the snapshot.  A restore saves their state before the
 *    machine reset and loads it after the snapshot's, as a migration
 *    would into a freshly reset machine: they come out as they went in.
 *
 * With the migration capability x-ignore-shared (savevm with
 * -machine cpr-snapshot=on), every shared RAM block is left alone too, as
 * migration leaves it.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/clone-visitor.h"
#include "qapi/qapi-builtin-visit.h"
#include "exec/memory.h"
#include "exec/ramblock.h"
#include "hw/core/cpu.h"
#include "hw/pci/pci.h"
#include "hw/qdev-core.h"
#include "hw/sysbus.h"
#include "qom/object.h"
#include "sysemu/hostmem.h"
#include "cpr-internal.h"

struct CprExclude {
    strList *ids;               /* as the user gave them */
    bool ignore_shared;
    GPtrArray *backends;        /* RAMBlock of the named backends */
    /*
     * The named devices, by canonical path: a reference would keep an
     * unplugged device from being finalized (and its DEVICE_DELETED event
     * from being sent) for as long as the snapshot lives.
     */
    GPtrArray *device_paths;
    GPtrArray *device_ids;      /* their names as given */
    GArray *intx;               /* their INTx levels at the snapshot */
    /* those, the devices and buses below them (their sections' opaques) */
    GHashTable *kept;
};

static int cpr_exclude_add_device(DeviceState *dev, void *opaque)
{
    g_hash_table_add(opaque, dev);
    return 0;
}

static int cpr_exclude_add_bus(BusState *bus, void *opaque)
{
    g_hash_table_add(opaque, bus);
    return 0;
}

/*
 * The INTx lines a PCI device raises as its bus counts them.  The bus's
 * count comes back from the snapshot, the device's lines do not: they
 * must be as they were at the snapshot.
 */
static uint32_t cpr_exclude_intx(DeviceState *dev)
{
    PCIDevice *d = (PCIDevice *)object_dynamic_cast(OBJECT(dev),
                                                    TYPE_PCI_DEVICE);

    if (!d || (pci_get_word(d->config + PCI_COMMAND) &
               PCI_COMMAND_INTX_DISABLE)) {
        return 0;
    }
    return d->irq_state;
}

/*
 * Every device the named devices stand for, as the machine has them
 * now: each itself and those below it; false if one is gone.
 */
static bool cpr_exclude_collect(CprExclude *x, bool check_intx,
                                Error **errp)
{
    guint i;

    g_hash_table_remove_all(x->kept);
    for (i = 0; i < x->device_paths->len; i++) {
        Object *obj = object_resolve_path_type(
            g_ptr_array_index(x->device_paths, i), TYPE_DEVICE, NULL);
        DeviceState *dev = obj ? DEVICE(obj) : NULL;

        if (!dev || !dev->realized) {
            error_setg(errp, "device '%s', whose state the snapshot keeps, "
                       "is gone; take a new snapshot",
                       (char *)g_ptr_array_index(x->device_ids, i));
            return false;
        }
        if (check_intx &&
            cpr_exclude_intx(dev) != g_array_index(x->intx, uint32_t, i)) {
            error_setg(errp, "device '%s', whose state the snapshot keeps, "
                       "has raised or lowered its INTx interrupt since the "
                       "snapshot; its state and the snapshot's interrupt "
                       "routing do not go together",
                       (char *)g_ptr_array_index(x->device_ids, i));
            error_append_hint(errp, "Give it MSI or MSI-X, or take a new "
                              "snapshot.\n");
            return false;
        }
        g_hash_table_add(x->kept, dev);
        qdev_walk_children(dev, cpr_exclude_add_device, cpr_exclude_add_bus,
                           NULL, NULL, x->kept);
    }
    return true;
}

static RAMBlock *cpr_exclude_backend(Object *obj, const char *id,
                                     Error **errp)
{
    HostMemoryBackend *be = MEMORY_BACKEND(obj);
    MemoryRegion *mr = host_memory_backend_get_memory(be);

    if (!host_memory_backend_is_mapped(be) || !mr->ram_block) {
        error_setg(errp, "memory backend '%s' is not in use", id);
        return NULL;
    }
    if (!be->share) {
        error_setg(errp, "memory backend '%s' is not shared (share=on): "
                   "the host could not pass inputs through it", id);
        return NULL;
    }
    return mr->ram_block;
}

/* A device by qdev id, or by QOM path */
static DeviceState *cpr_exclude_find_device(const char *id)
{
    DeviceState *dev = qdev_find_recursive(sysbus_get_default(), id);
    Object *obj;

    if (dev) {
        return dev;
    }
    obj = object_resolve_path_type(id, TYPE_DEVICE, NULL);
    return obj ? DEVICE(obj) : NULL;
}

CprExclude *cpr_exclude_new(strList *ids, bool ignore_shared, Error **errp)
{
    g_autoptr(CprExclude) x = g_new0(CprExclude, 1);
    strList *e;

    x->ids = QAPI_CLONE(strList, ids);
    x->ignore_shared = ignore_shared;
    x->backends = g_ptr_array_new();
    x->device_paths = g_ptr_array_new_with_free_func(g_free);
    x->device_ids = g_ptr_array_new_with_free_func(g_free);
    x->intx = g_array_new(false, false, sizeof(uint32_t));
    x->kept = g_hash_table_new(NULL, NULL);
    for (e = ids; e; e = e->next) {
        Object *obj = object_resolve_path_component(object_get_objects_root(),
                                                    e->value);
        DeviceState *dev;
        uint32_t intx;

        if (obj && object_dynamic_cast(obj, TYPE_MEMORY_BACKEND)) {
            RAMBlock *rb = cpr_exclude_backend(obj, e->value, errp);

            if (!rb) {
                return NULL;
            }
            g_ptr_array_add(x->backends, rb);
            continue;
        }
        dev = cpr_exclude_find_device(e->value);
        if (!dev) {
            error_setg(errp, "'%s' is neither a memory backend nor a device",
                       e->value);
            return NULL;
        }
        if (!dev->realized) {
            error_setg(errp, "device '%s' is not realized", e->value);
            return NULL;
        }
        if (object_dynamic_cast(OBJECT(dev), TYPE_CPU)) {
            error_setg(errp, "'%s' is a CPU, whose state every restore "
                       "puts back", e->value);
            return NULL;
        }
        g_ptr_array_add(x->device_paths,
                        object_get_canonical_path(OBJECT(dev)));
        g_ptr_array_add(x->device_ids, g_strdup(e->value));
        intx = cpr_exclude_intx(dev);
        g_array_append_val(x->intx, intx);
    }
    if (!cpr_exclude_collect(x, false, errp)) {
        return NULL;
    }
    return g_steal_pointer(&x);
}

void cpr_exclude_free(CprExclude *x)
{
    if (x) {
        qapi_free_strList(x->ids);
        g_ptr_array_free(x->backends, true);
        g_ptr_array_free(x->device_paths, true);
        g_ptr_array_free(x->device_ids, true);
        g_array_free(x->intx, true);
        g_hash_table_destroy(x->kept);
        g_free(x);
    }
}

strList *cpr_exclude_ids(CprExclude *x)
{
    return QAPI_CLONE(strList, x->ids);
}

bool cpr_exclude_has_block(CprExclude *x, RAMBlock *rb)
{
    Object *owner = rb->mr ? rb->mr->owner : NULL;

    if (x->ignore_shared && qemu_ram_is_shared(rb)) {
        return true;
    }
    if (g_ptr_array_find(x->backends, rb, NULL)) {
        return true;
    }
    return owner && object_dynamic_cast(owner, TYPE_DEVICE) &&
           g_hash_table_contains(x->kept, owner);
}

bool cpr_exclude_has_devices(CprExclude *x)
{
    return x && x->device_paths->len;
}

bool cpr_exclude_keeps(void *opaque, void *arg)
{
    CprExclude *x = arg;

    return g_hash_table_contains(x->kept, opaque);
}

bool cpr_exclude_saves(void *opaque, void *arg)
{
    return !cpr_exclude_keeps(opaque, arg);
}

bool cpr_exclude_ignores_shared(CprExclude *x)
{
    return x->ignore_shared;
}

GByteArray *cpr_exclude_save_kept(CprExclude *x, Error **errp)
{
    if (!cpr_exclude_collect(x, true, errp)) {
        return NULL;
    }
    return cpr_save_devices_some(cpr_exclude_keeps, x, false, errp);
}

bool cpr_exclude_check(CprExclude *x, Error **errp)
{
    return cpr_exclude_collect(x, true, errp);
}
