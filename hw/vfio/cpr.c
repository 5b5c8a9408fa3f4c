/*
 * VFIO devices kept across cprsave restart
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A passed-through device keeps working while QEMU executes its new
 * binary: its container, group and device descriptors, and the eventfds
 * its interrupts are signalled on, cross execve in the CPR state, and the
 * new process takes them instead of opening the device again.  Nothing is
 * done to the device itself: no container or IOMMU set-up, no reset, no
 * interrupt re-configuration, no config space sizing.
 *
 * DMA mappings stay in the IOMMU with their pages pinned.  Before execve,
 * the virtual address of every mapping is invalidated
 * (VFIO_IOMMU_UNMAP_DMA with VFIO_DMA_UNMAP_FLAG_VADDR), because the old
 * address space goes away; the list of mappings (IOVA, size, RAM block,
 * offset) goes to the new process as "vfio-dma:<group>", a vmstate record
 * ("vfio-cpr-dma").  There, each
 * mapping is pointed at the address the same RAM now has
 * (VFIO_IOMMU_MAP_DMA with VFIO_DMA_MAP_FLAG_VADDR) when the memory
 * listener adds the same section again.  Sections that only exist until
 * cprload has loaded the guest's view of memory (PAM, BARs), and overlap a
 * kept mapping, are left unmapped; what the guest's view still lacks after
 * cprload is mapped then, and mappings it no longer has are removed.
 *
 * If execve fails, every mapping gets its old virtual address back.
 *
 * Names in the CPR state: "vfio-container" and "vfio-group" with the group
 * number as id, "vfio-device:<name>", "vfio-irq:<name>:<kind>" with the
 * vector as id (kinds: intx, msi, msix, msi-kvm, err, req).
 */

#include "qemu/osdep.h"
#include <linux/vfio.h>
#include <sys/ioctl.h>
#include "qapi/error.h"
#include "qemu/error-report.h"
#include "qemu/event_notifier.h"
#include "exec/ramblock.h"
#include "hw/pci/msi.h"
#include "hw/pci/msix.h"
#include "hw/vfio/vfio-common.h"
#include "migration/cpr.h"
#include "migration/vmstate.h"
#include "pci.h"
#include "trace.h"

/* A DMA mapping of the old process, still in the IOMMU */
typedef struct VFIOCprOld {
    hwaddr iova;
    uint64_t size;
    char *idstr;                /* RAM block and offset it maps */
    uint64_t offset;
    bool repointed;
} VFIOCprOld;

/* A section the new process left unmapped until cprload */
typedef struct VFIOCprDeferred {
    hwaddr iova;
    uint64_t size;
    void *vaddr;
    bool readonly;
} VFIOCprDeferred;

static bool vfio_cpr_hooked;

static char *vfio_cpr_dev_name(const char *name)
{
    return g_strdup_printf("vfio-device:%s", name);
}

static char *vfio_cpr_irq_name(VFIODevice *vbasedev, const char *kind)
{
    return g_strdup_printf("vfio-irq:%s:%s", vbasedev->name, kind);
}

static char *vfio_cpr_dma_name(int groupid)
{
    return g_strdup_printf("vfio-dma:%d", groupid);
}

int vfio_cpr_group_fd(int groupid)
{
    return cpr_is_incoming() ? cpr_take_fd("vfio-group", groupid) : -1;
}

int vfio_cpr_container_fd(int groupid)
{
    return cpr_is_incoming() ? cpr_take_fd("vfio-container", groupid) : -1;
}

int vfio_cpr_device_fd(const char *name)
{
    g_autofree char *key = vfio_cpr_dev_name(name);

    return cpr_is_incoming() ? cpr_take_fd(key, 0) : -1;
}

int vfio_cpr_notifier_init(VFIODevice *vbasedev, EventNotifier *e,
                           const char *kind, int nr)
{
    g_autofree char *key = vfio_cpr_irq_name(vbasedev, kind);
    int fd = vbasedev->cpr_resume ? cpr_take_fd(key, nr) : -1;

    if (fd >= 0) {
        trace_vfio_cpr_notifier_kept(vbasedev->name, kind, nr, fd);
        event_notifier_init_fd(e, fd);
        return 0;
    }
    return event_notifier_init(e, 0);
}

bool vfio_cpr_irq_kept(VFIODevice *vbasedev, const char *kind, int nr)
{
    g_autofree char *key = vfio_cpr_irq_name(vbasedev, kind);

    return vbasedev->cpr_resume && cpr_has_fd(key, nr);
}

/*
 * What a mapping maps, as the next process can tell: the RAM block's name,
 * or "-" for memory without one (a BAR of a passed-through device).
 */
static const char *vfio_cpr_rb_name(RAMBlock *rb)
{
    return rb && rb->idstr[0] ? rb->idstr : "-";
}

/* Mappings of the running process, for the rollback and the next process */

void vfio_cpr_dma_mapped(VFIOContainer *c, hwaddr iova, uint64_t size,
                         void *vaddr, bool readonly)
{
    VFIODMARange r = { iova, size, vaddr, readonly };

    if (!c->cpr_ranges) {
        c->cpr_ranges = g_array_new(false, false, sizeof(VFIODMARange));
    }
    g_array_append_val(c->cpr_ranges, r);
}

void vfio_cpr_dma_unmapped(VFIOContainer *c, hwaddr iova, uint64_t size)
{
    guint i = 0;

    while (c->cpr_ranges && i < c->cpr_ranges->len) {
        VFIODMARange *r = &g_array_index(c->cpr_ranges, VFIODMARange, i);

        if (r->iova >= iova && r->iova + r->size <= iova + size) {
            g_array_remove_index_fast(c->cpr_ranges, i);
        } else {
            i++;
        }
    }
}

/* The DMA mappings of a container as they cross execve */

typedef struct VFIOCprDmaRecord {
    uint64_t iova;
    uint64_t size;
    uint32_t idstr_len;         /* with its NUL */
    uint8_t *idstr;             /* RAM block and offset it maps */
    uint64_t offset;
} VFIOCprDmaRecord;

typedef struct VFIOCprDmaList {
    int32_t count;
    VFIOCprDmaRecord *maps;
} VFIOCprDmaList;

/* Bounds checked before a length or count sizes an allocation */
#define VFIO_CPR_MAX_IDSTR      256
#define VFIO_CPR_MAX_MAPPINGS   (1 << 20)

/* An element of the array vmstate allocates: start from zero */
static int vfio_cpr_dma_record_pre_load(void *opaque)
{
    memset(opaque, 0, sizeof(VFIOCprDmaRecord));
    return 0;
}

static bool vfio_cpr_dma_record_idstr_len_ok(void *opaque, int version_id)
{
    return ((VFIOCprDmaRecord *)opaque)->idstr_len <= VFIO_CPR_MAX_IDSTR;
}

static int vfio_cpr_dma_record_post_load(void *opaque, int version_id)
{
    VFIOCprDmaRecord *r = opaque;

    return cpr_vmstate_string_ok(r->idstr, r->idstr_len) ? 0 : -EINVAL;
}

static const VMStateDescription vmstate_vfio_cpr_dma_record = {
    .name = "vfio-cpr-dma-mapping",
    .version_id = 1,
    .minimum_version_id = 1,
    .pre_load = vfio_cpr_dma_record_pre_load,
    .post_load = vfio_cpr_dma_record_post_load,
    .fields = (VMStateField[]) {
        VMSTATE_UINT64(iova, VFIOCprDmaRecord),
        VMSTATE_UINT64(size, VFIOCprDmaRecord),
        VMSTATE_UINT32(idstr_len, VFIOCprDmaRecord),
        VMSTATE_VALIDATE("idstr_len", vfio_cpr_dma_record_idstr_len_ok),
        VMSTATE_VBUFFER_ALLOC_UINT32(idstr, VFIOCprDmaRecord, 0, NULL,
                                     idstr_len),
        VMSTATE_UINT64(offset, VFIOCprDmaRecord),
        VMSTATE_END_OF_LIST()
    },
};

static bool vfio_cpr_dma_list_count_ok(void *opaque, int version_id)
{
    VFIOCprDmaList *l = opaque;

    return l->count >= 0 && l->count <= VFIO_CPR_MAX_MAPPINGS;
}

static const VMStateDescription vmstate_vfio_cpr_dma = {
    .name = "vfio-cpr-dma",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = (VMStateField[]) {
        VMSTATE_INT32(count, VFIOCprDmaList),
        VMSTATE_VALIDATE("count", vfio_cpr_dma_list_count_ok),
        VMSTATE_STRUCT_VARRAY_ALLOC(maps, VFIOCprDmaList, count, 0,
                                    vmstate_vfio_cpr_dma_record,
                                    VFIOCprDmaRecord),
        VMSTATE_END_OF_LIST()
    },
};

/* In the new process: the old process's mappings of this container */

static void vfio_cpr_old_free(gpointer p)
{
    g_free(((VFIOCprOld *)p)->idstr);
}

void vfio_cpr_container_incoming(VFIOContainer *c, int groupid)
{
    g_autofree char *key = vfio_cpr_dma_name(groupid);
    VFIOCprDmaList list = { 0 };
    Error *err = NULL;
    int i;

    if (!cpr_is_incoming() || !cpr_has_fd(key, 0)) {
        return;
    }
    c->cpr_old = g_array_new(false, false, sizeof(VFIOCprOld));
    g_array_set_clear_func(c->cpr_old, vfio_cpr_old_free);
    c->cpr_deferred = g_array_new(false, false, sizeof(VFIOCprDeferred));
    if (!cpr_take_vmstate(key, &vmstate_vfio_cpr_dma, &list, &err)) {
        /*
         * Its mappings are then made anew as sections come.  The entries
         * a failed load did not reach are not initialised: not freed.
         */
        warn_report_err(err);
        g_free(list.maps);
        return;
    }
    for (i = 0; list.maps && i < list.count; i++) {
        VFIOCprOld old = {
            .iova = list.maps[i].iova,
            .size = list.maps[i].size,
            .idstr = (char *)list.maps[i].idstr,
            .offset = list.maps[i].offset,
        };

        g_array_append_val(c->cpr_old, old);
    }
    g_free(list.maps);
}

static bool vfio_cpr_vaddr(VFIOContainer *c, hwaddr iova, uint64_t size,
                           void *vaddr)
{
    struct vfio_iommu_type1_dma_map map = {
        .argsz = sizeof(map),
        .flags = VFIO_DMA_MAP_FLAG_VADDR,
        .vaddr = (uintptr_t)vaddr,
        .iova = iova,
        .size = size,
    };

    if (ioctl(c->fd, VFIO_IOMMU_MAP_DMA, &map)) {
        error_report("vfio: cannot point kept mapping 0x%" HWADDR_PRIx
                     "+0x%" PRIx64 " at %p: %s", iova, size, vaddr,
                     strerror(errno));
        return false;
    }
    return true;
}

bool vfio_cpr_dma_map(VFIOContainer *c, hwaddr iova, uint64_t size,
                      void *vaddr, bool readonly, int *ret)
{
    ram_addr_t offset = 0;
    RAMBlock *rb;
    guint i;

    if (!c->cpr_old) {
        return false;
    }
    rb = qemu_ram_block_from_host(vaddr, false, &offset);
    for (i = 0; i < c->cpr_old->len; i++) {
        VFIOCprOld *old = &g_array_index(c->cpr_old, VFIOCprOld, i);

        if (old->repointed || !ranges_overlap(old->iova, old->size,
                                              iova, size)) {
            continue;
        }
        if (old->iova == iova && old->size == size &&
            !strcmp(old->idstr, vfio_cpr_rb_name(rb)) &&
            old->offset == offset) {
            trace_vfio_cpr_dma_repoint(iova, size, vaddr);
            *ret = vfio_cpr_vaddr(c, iova, size, vaddr) ? 0 : -EINVAL;
            if (!*ret) {
                old->repointed = true;
                vfio_cpr_dma_mapped(c, iova, size, vaddr, readonly);
            }
            return true;
        }
        /* Another view of memory than the old one: wait for cprload. */
        {
            VFIOCprDeferred d = { iova, size, vaddr, readonly };

            trace_vfio_cpr_dma_defer(iova, size);
            g_array_append_val(c->cpr_deferred, d);
            *ret = 0;
            return true;
        }
    }
    return false;
}

bool vfio_cpr_dma_unmap(VFIOContainer *c, hwaddr iova, uint64_t size)
{
    guint i;

    for (i = 0; c->cpr_deferred && i < c->cpr_deferred->len; i++) {
        VFIOCprDeferred *d = &g_array_index(c->cpr_deferred,
                                            VFIOCprDeferred, i);

        if (d->iova == iova && d->size == size) {
            g_array_remove_index(c->cpr_deferred, i);
            return true;
        }
    }
    return false;
}

/* After cprload: drop what the old view had alone, map what it lacked. */
static void vfio_cpr_container_loaded(VFIOContainer *c)
{
    struct vfio_iommu_type1_dma_unmap unmap = { .argsz = sizeof(unmap) };
    guint i;

    if (!c->cpr_old) {
        return;
    }
    for (i = 0; i < c->cpr_old->len; i++) {
        VFIOCprOld *old = &g_array_index(c->cpr_old, VFIOCprOld, i);

        if (old->repointed) {
            continue;
        }
        warn_report("vfio: kept mapping 0x%" HWADDR_PRIx "+0x%" PRIx64
                    " of %s is not in the loaded memory map; unmapping it",
                    old->iova, old->size, old->idstr);
        unmap.iova = old->iova;
        unmap.size = old->size;
        if (ioctl(c->fd, VFIO_IOMMU_UNMAP_DMA, &unmap)) {
            error_report("vfio: VFIO_UNMAP_DMA failed: %s", strerror(errno));
        }
    }
    g_array_free(c->cpr_old, true);
    c->cpr_old = NULL;
    for (i = 0; i < c->cpr_deferred->len; i++) {
        VFIOCprDeferred *d = &g_array_index(c->cpr_deferred,
                                            VFIOCprDeferred, i);

        if (vfio_container_dma_map(c, d->iova, d->size, d->vaddr,
                                   d->readonly)) {
            error_report("vfio: cannot map 0x%" HWADDR_PRIx "+0x%" PRIx64
                         " after cprload", d->iova, d->size);
        }
    }
    g_array_free(c->cpr_deferred, true);
    c->cpr_deferred = NULL;
}

/* Before execve */

static void vfio_cpr_save_irq(VFIODevice *vbasedev, const char *kind, int nr,
                              EventNotifier *e, bool keep)
{
    g_autofree char *key = vfio_cpr_irq_name(vbasedev, kind);

    cpr_keep_fd(key, nr, event_notifier_get_fd(e), keep);
}

static void vfio_cpr_save_device(VFIODevice *vbasedev, bool keep)
{
    g_autofree char *key = vfio_cpr_dev_name(vbasedev->name);
    VFIOPCIDevice *vdev;
    int i;

    cpr_keep_fd(key, 0, vbasedev->fd, keep);
    if (vbasedev->type != VFIO_DEVICE_TYPE_PCI) {
        return;
    }
    vdev = container_of(vbasedev, VFIOPCIDevice, vbasedev);
    if (vdev->pci_aer) {
        vfio_cpr_save_irq(vbasedev, "err", 0, &vdev->err_notifier, keep);
    }
    if (vdev->req_enabled) {
        vfio_cpr_save_irq(vbasedev, "req", 0, &vdev->req_notifier, keep);
    }
    if (vdev->interrupt == VFIO_INT_INTx) {
        vfio_cpr_save_irq(vbasedev, "intx", 0, &vdev->intx.interrupt, keep);
    } else if (vdev->interrupt == VFIO_INT_MSI ||
               vdev->interrupt == VFIO_INT_MSIX) {
        const char *kind = vdev->interrupt == VFIO_INT_MSI ? "msi" : "msix";

        /*
         * Every vector the kernel signals, masked or not: a masked MSI-X
         * vector's eventfd is the one that sets its pending bit.
         */
        for (i = 0; i < vdev->nr_vectors; i++) {
            VFIOMSIVector *v = &vdev->msi_vectors[i];

            if (!v->use) {
                continue;
            }
            vfio_cpr_save_irq(vbasedev, kind, i, &v->interrupt, keep);
            if (v->virq >= 0) {
                vfio_cpr_save_irq(vbasedev, "msi-kvm", i, &v->kvm_interrupt,
                                  keep);
            }
        }
    }
}

static void vfio_cpr_save_ranges(VFIOContainer *c, int groupid)
{
    g_autofree char *key = vfio_cpr_dma_name(groupid);
    int n = c->cpr_ranges ? c->cpr_ranges->len : 0;
    g_autofree VFIOCprDmaRecord *maps = g_new0(VFIOCprDmaRecord, n);
    VFIOCprDmaList list = { .count = n, .maps = maps };
    int i;

    for (i = 0; i < n; i++) {
        VFIODMARange *r = &g_array_index(c->cpr_ranges, VFIODMARange, i);
        ram_addr_t offset = 0;
        RAMBlock *rb = qemu_ram_block_from_host(r->vaddr, false, &offset);
        const char *idstr = vfio_cpr_rb_name(rb);

        maps[i] = (VFIOCprDmaRecord) {
            .iova = r->iova, .size = r->size, .offset = offset,
            .idstr_len = strlen(idstr) + 1, .idstr = (uint8_t *)idstr,
        };
    }
    cpr_save_vmstate(key, &vmstate_vfio_cpr_dma, &list);
}

/* Invalidate the virtual address of every mapping: execve drops it. */
static bool vfio_cpr_invalidate(VFIOContainer *c, Error **errp)
{
    struct vfio_iommu_type1_dma_unmap unmap = {
        .argsz = sizeof(unmap),
        .flags = VFIO_DMA_UNMAP_FLAG_VADDR,
    };
    guint i;

    for (i = 0; c->cpr_ranges && i < c->cpr_ranges->len; i++) {
        VFIODMARange *r = &g_array_index(c->cpr_ranges, VFIODMARange, i);

        unmap.iova = r->iova;
        unmap.size = r->size;
        if (ioctl(c->fd, VFIO_IOMMU_UNMAP_DMA, &unmap)) {
            error_setg_errno(errp, errno, "vfio: cannot invalidate the "
                             "address of mapping 0x%" HWADDR_PRIx "+0x%"
                             PRIx64, r->iova, r->size);
            break;
        }
        /* The rollback gives back the first cpr_vaddr_invalid ranges. */
        c->cpr_vaddr_invalid = i + 1;
    }
    return !c->cpr_ranges || i == c->cpr_ranges->len;
}

static int vfio_cpr_exec(Error **errp)
{
    VFIOGroup *group;
    VFIODevice *vbasedev;

    QLIST_FOREACH(group, &vfio_group_list, next) {
        VFIOContainer *c = group->container;

        cpr_save_fd("vfio-group", group->groupid, group->fd);
        cpr_save_fd("vfio-container", group->groupid, c->fd);
        QLIST_FOREACH(vbasedev, &group->device_list, next) {
            vfio_cpr_save_device(vbasedev, true);
        }
        /* A container's mappings go once, under its first group. */
        if (group == QLIST_FIRST(&c->group_list)) {
            vfio_cpr_save_ranges(c, group->groupid);
            if (!vfio_cpr_invalidate(c, errp)) {
                return -1;
            }
        }
    }
    return 0;
}

static void vfio_cpr_exec_failed(void)
{
    VFIOGroup *group;
    VFIODevice *vbasedev;

    QLIST_FOREACH(group, &vfio_group_list, next) {
        VFIOContainer *c = group->container;
        g_autofree char *key = vfio_cpr_dma_name(group->groupid);

        if (c->cpr_vaddr_invalid) {
            guint n = c->cpr_vaddr_invalid, i;

            for (i = 0; i < n; i++) {
                VFIODMARange *r = &g_array_index(c->cpr_ranges,
                                                 VFIODMARange, i);

                vfio_cpr_vaddr(c, r->iova, r->size, r->vaddr);
            }
            c->cpr_vaddr_invalid = 0;
        }
        cpr_delete_fd("vfio-group", group->groupid);
        cpr_delete_fd("vfio-container", group->groupid);
        cpr_delete_fd(key, 0);
        QLIST_FOREACH(vbasedev, &group->device_list, next) {
            vfio_cpr_save_device(vbasedev, false);
        }
    }
}

static void vfio_cpr_loaded(void)
{
    VFIOGroup *group;
    VFIODevice *vbasedev;

    QLIST_FOREACH(group, &vfio_group_list, next) {
        vfio_cpr_container_loaded(group->container);
        QLIST_FOREACH(vbasedev, &group->device_list, next) {
            vbasedev->cpr_resume = false;
        }
    }
}

static int vfio_cpr_notify(NotifierWithReturn *n, void *data)
{
    CprNotifyData *d = data;

    switch (d->event) {
    case CPR_EVENT_EXEC:
        return vfio_cpr_exec(d->errp);
    case CPR_EVENT_EXEC_FAILED:
        vfio_cpr_exec_failed();
        break;
    case CPR_EVENT_LOADED:
        vfio_cpr_loaded();
        break;
    default:
        break;
    }
    return 0;
}

static NotifierWithReturn vfio_cpr_notifier = { .notify = vfio_cpr_notify };

/* What keeps cprsave from updating a VM with these devices */
static void vfio_cpr_blockers(CprBlockerList ***tail)
{
    VFIOGroup *group;
    VFIODevice *vbasedev;

    QLIST_FOREACH(group, &vfio_group_list, next) {
        VFIOContainer *c = group->container;

        if (group == QLIST_FIRST(&c->group_list) &&
            (c->iommu_type != VFIO_TYPE1v2_IOMMU &&
             c->iommu_type != VFIO_TYPE1_IOMMU)) {
            cpr_add_blocker(tail, CPR_MODE_RESTART, "vfio",
                            "group %d: only the type1 IOMMU "
                            "backend can keep DMA mappings", group->groupid);
        } else if (group == QLIST_FIRST(&c->group_list) &&
                   ioctl(c->fd, VFIO_CHECK_EXTENSION, VFIO_UPDATE_VADDR) <= 0) {
            cpr_add_blocker(tail, CPR_MODE_RESTART, "vfio",
                            "group %d: the kernel cannot "
                            "update DMA mapping addresses "
                            "(no VFIO_UPDATE_VADDR)", group->groupid);
        }
        if (group == QLIST_FIRST(&c->group_list) &&
            !QLIST_EMPTY(&c->giommu_list)) {
            cpr_add_blocker(tail, CPR_MODE_RESTART, "vfio",
                            "group %d: DMA through a virtual "
                            "IOMMU cannot be kept yet", group->groupid);
        }
        QLIST_FOREACH(vbasedev, &group->device_list, next) {
            cpr_add_blocker(tail, CPR_MODE_TRANSFER, vbasedev->name,
                            "handing a VFIO device to another process is "
                            "not done yet; use mode 'restart'");
            cpr_add_blocker(tail, CPR_MODE_REBOOT, vbasedev->name,
                            "a device passed through with VFIO loses its "
                            "state when the host reboots; unplug it "
                            "(device_del) before cprsave reboot");
            if (vbasedev->type != VFIO_DEVICE_TYPE_PCI) {
                cpr_add_blocker(tail, CPR_MODE_RESTART, vbasedev->name,
                                "only VFIO PCI devices can be kept");
                continue;
            }
            if (vbasedev->ram_block_discard_allowed) {
                cpr_add_blocker(tail, CPR_MODE_RESTART, vbasedev->name,
                                "a mediated device cannot keep a valid "
                                "address window");
                continue;
            }
        }
    }
}

/* The guest's view of the device, saved only for cprsave */

static bool vfio_pci_cpr_needed(void *opaque)
{
    return cpr_save_in_progress();
}

static bool vfio_pci_cpr_msix(void *opaque, int version_id)
{
    VFIOPCIDevice *vdev = opaque;

    return msix_present(&vdev->pdev);
}

static int vfio_pci_cpr_post_load(void *opaque, int version_id)
{
    vfio_pci_cpr_resume_irqs(opaque);
    return 0;
}

static const VMStateDescription vmstate_vfio_pci_cpr = {
    .name = "vfio-pci-cpr",
    .version_id = 1,
    .minimum_version_id = 1,
    .needed = vfio_pci_cpr_needed,
    .post_load = vfio_pci_cpr_post_load,
    .fields = (VMStateField[]) {
        VMSTATE_PCI_DEVICE(pdev, VFIOPCIDevice),
        VMSTATE_MSIX_TEST(pdev, VFIOPCIDevice, vfio_pci_cpr_msix),
        VMSTATE_BOOL(intx.pending, VFIOPCIDevice),
        VMSTATE_END_OF_LIST()
    }
};

void vfio_pci_cpr_register(VFIOPCIDevice *vdev)
{
    if (!vfio_cpr_hooked) {
        vfio_cpr_hooked = true;
        cpr_add_notifier(&vfio_cpr_notifier);
        cpr_add_blocker_fn(vfio_cpr_blockers);
    }
    if (vdev->vbasedev.migration_blocker) {
        cpr_allow_migration_blocker(vdev->vbasedev.migration_blocker);
    }
    vmstate_register(VMSTATE_IF(vdev), 0, &vmstate_vfio_pci_cpr, vdev);
}

void vfio_pci_cpr_unregister(VFIOPCIDevice *vdev)
{
    if (vdev->vbasedev.migration_blocker) {
        cpr_disallow_migration_blocker(vdev->vbasedev.migration_blocker);
    }
    vmstate_unregister(VMSTATE_IF(vdev), &vmstate_vfio_pci_cpr, vdev);
}

void vfio_cpr_container_free(VFIOContainer *c)
{
    if (c->cpr_ranges) {
        g_array_free(c->cpr_ranges, true);
    }
    if (c->cpr_old) {
        g_array_free(c->cpr_old, true);
    }
    if (c->cpr_deferred) {
        g_array_free(c->cpr_deferred, true);
    }
}
