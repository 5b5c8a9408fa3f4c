/*
 * VFIO devices kept across cprsave restart
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A passed-through device keeps working while another QEMU takes the VM
 * over, by execve (cprsave restart) or from another process (cprsave
 * transfer): its container, group and device descriptors, and the
 * eventfds its interrupts are signalled on, go to the new QEMU in the CPR
 * state, and it takes them instead of opening the device again.  Nothing
 * is done to the device itself: no container or IOMMU set-up, no reset,
 * no interrupt re-configuration, no config space sizing.
 *
 * DMA mappings stay in the IOMMU with their pages pinned; only the
 * virtual address each one has in the process that owns it changes.  The
 * list of mappings (IOVA, size, RAM block, offset) goes to the new
 * process as "vfio-dma:<group>", a vmstate record ("vfio-cpr-dma").
 * Until it has loaded the VM's state, the new process changes nothing in
 * the IOMMU: the memory listener's sections that match a kept mapping
 * are noted, the others wait.  Once the state is loaded, each kept
 * mapping is pointed at the address the same RAM has in the new process
 * (VFIO_IOMMU_MAP_DMA with VFIO_DMA_MAP_FLAG_VADDR; for transfer mode,
 * after invalidating the old process's address with
 * VFIO_DMA_UNMAP_FLAG_VADDR, which also moves the locked-memory charge
 * of the pinned pages to the new process).  Then kept mappings the loaded
 * memory map lacks are removed and sections it gained are mapped: at
 * once after cprload, after the commit point for transfer mode.
 *
 * Before execve the old process invalidates every address itself,
 * because its address space goes away.  If execve or the transfer fails,
 * every mapping gets the old process's address back.
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
    void *vaddr;                /* the same memory here, once it is seen */
    bool readonly;
    bool repointed;
} VFIOCprOld;

/* A section the new process left unmapped until the VM is loaded */
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

/*
 * Point the kept mapping @iova+@size at @vaddr in this process.  Its
 * address is invalid after the old process's execve; otherwise it is
 * still the address another process (or this one) gave it, invalidated
 * first.  Moving it moves the locked-memory charge of its pinned pages to
 * this process (Linux 6.3, 6.1.16).
 */
static bool vfio_cpr_point(VFIOContainer *c, hwaddr iova, uint64_t size,
                           void *vaddr, Error **errp)
{
    struct vfio_iommu_type1_dma_map map = {
        .argsz = sizeof(map),
        .flags = VFIO_DMA_MAP_FLAG_VADDR,
        .vaddr = (uintptr_t)vaddr,
        .iova = iova,
        .size = size,
    };
    struct vfio_iommu_type1_dma_unmap unmap = {
        .argsz = sizeof(unmap),
        .flags = VFIO_DMA_UNMAP_FLAG_VADDR,
        .iova = iova,
        .size = size,
    };
    int ret = ioctl(c->fd, VFIO_IOMMU_MAP_DMA, &map);

    if (ret && errno == EINVAL && !ioctl(c->fd, VFIO_IOMMU_UNMAP_DMA, &unmap)) {
        ret = ioctl(c->fd, VFIO_IOMMU_MAP_DMA, &map);
    }
    if (!ret) {
        trace_vfio_cpr_dma_repoint(iova, size, vaddr);
        return true;
    }
    if (errno == ENOMEM) {
        error_setg(errp, "vfio: cannot take DMA mapping 0x%" HWADDR_PRIx
                   "+0x%" PRIx64 ": its pinned pages are charged to this "
                   "process, which may not lock that much memory (it needs "
                   "CAP_IPC_LOCK or an RLIMIT_MEMLOCK covering the guest "
                   "RAM the device can reach)", iova, size);
    } else {
        error_setg_errno(errp, errno, "vfio: cannot point kept DMA mapping "
                         "0x%" HWADDR_PRIx "+0x%" PRIx64 " at %p", iova,
                         size, vaddr);
    }
    return false;
}

/*
 * In the new process, until the VM's state is loaded: note the sections
 * that match a kept mapping, leave the others for later.  Nothing changes
 * in the IOMMU: the device works for the old view of memory, and for
 * transfer mode the old process still runs the VM.
 */
bool vfio_cpr_dma_map(VFIOContainer *c, hwaddr iova, uint64_t size,
                      void *vaddr, bool readonly, int *ret)
{
    VFIOCprDeferred d = { iova, size, vaddr, readonly };
    ram_addr_t offset = 0;
    RAMBlock *rb;
    guint i;

    if (!c->cpr_old) {
        return false;
    }
    rb = qemu_ram_block_from_host(vaddr, false, &offset);
    *ret = 0;
    for (i = 0; i < c->cpr_old->len; i++) {
        VFIOCprOld *old = &g_array_index(c->cpr_old, VFIOCprOld, i);

        if (!old->vaddr && old->iova == iova && old->size == size &&
            !strcmp(old->idstr, vfio_cpr_rb_name(rb)) &&
            old->offset == offset) {
            old->vaddr = vaddr;
            old->readonly = readonly;
            return true;
        }
    }
    trace_vfio_cpr_dma_defer(iova, size);
    g_array_append_val(c->cpr_deferred, d);
    return true;
}

bool vfio_cpr_dma_unmap(VFIOContainer *c, hwaddr iova, uint64_t size)
{
    guint i;

    if (!c->cpr_old) {
        return false;
    }
    for (i = 0; i < c->cpr_old->len; i++) {
        VFIOCprOld *old = &g_array_index(c->cpr_old, VFIOCprOld, i);

        if (old->iova >= iova && old->iova + old->size <= iova + size) {
            old->vaddr = NULL;
        }
    }
    i = 0;
    while (i < c->cpr_deferred->len) {
        VFIOCprDeferred *d = &g_array_index(c->cpr_deferred,
                                            VFIOCprDeferred, i);

        if (d->iova >= iova && d->iova + d->size <= iova + size) {
            g_array_remove_index(c->cpr_deferred, i);
        } else {
            i++;
        }
    }
    return true;
}

/* The VM's state is loaded: point the kept mappings at this process. */
static bool vfio_cpr_container_take(VFIOContainer *c, Error **errp)
{
    guint i;

    for (i = 0; c->cpr_old && i < c->cpr_old->len; i++) {
        VFIOCprOld *old = &g_array_index(c->cpr_old, VFIOCprOld, i);

        if (!old->vaddr || old->repointed) {
            continue;
        }
        if (!vfio_cpr_point(c, old->iova, old->size, old->vaddr, errp)) {
            return false;
        }
        old->repointed = true;
        vfio_cpr_dma_mapped(c, old->iova, old->size, old->vaddr,
                            old->readonly);
    }
    return true;
}

/* Then drop what the old view had alone, map what it lacked. */
static void vfio_cpr_container_reconcile(VFIOContainer *c)
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
                         " after the VM was loaded", d->iova, d->size);
        }
    }
    g_array_free(c->cpr_deferred, true);
    c->cpr_deferred = NULL;
}

/* What crosses to the new process */

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

static void vfio_cpr_keep_ranges(VFIOContainer *c, int groupid, bool keep)
{
    g_autofree char *key = vfio_cpr_dma_name(groupid);
    int n = c->cpr_ranges ? c->cpr_ranges->len : 0;
    g_autofree VFIOCprDmaRecord *maps = NULL;
    VFIOCprDmaList list = { .count = n };
    int i;

    if (!keep) {
        cpr_delete_fd(key, 0);
        return;
    }
    maps = g_new0(VFIOCprDmaRecord, n);
    list.maps = maps;
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

/* The new process owns the VM: its IOMMU map becomes the loaded one's. */
static void vfio_cpr_reconcile(void *unused)
{
    VFIOGroup *group;

    QLIST_FOREACH(group, &vfio_group_list, next) {
        vfio_cpr_container_reconcile(group->container);
    }
}

static void vfio_cpr_group_blockers(CprBlockerList ***tail, CprMode mode,
                                    VFIOGroup *group)
{
    VFIOContainer *c = group->container;
    VFIODevice *vbasedev;

    if (group == QLIST_FIRST(&c->group_list)) {
        if (c->iommu_type != VFIO_TYPE1v2_IOMMU &&
            c->iommu_type != VFIO_TYPE1_IOMMU) {
            cpr_add_blocker(tail, mode, "vfio", "group %d: only the type1 "
                            "IOMMU backend can keep DMA mappings",
                            group->groupid);
        } else if (ioctl(c->fd, VFIO_CHECK_EXTENSION, VFIO_UPDATE_VADDR) <= 0) {
            cpr_add_blocker(tail, mode, "vfio", "group %d: the kernel cannot "
                            "update DMA mapping addresses "
                            "(no VFIO_UPDATE_VADDR)", group->groupid);
        }
        if (!QLIST_EMPTY(&c->giommu_list)) {
            cpr_add_blocker(tail, mode, "vfio", "group %d: DMA through a "
                            "virtual IOMMU cannot be kept yet",
                            group->groupid);
        }
    }
    QLIST_FOREACH(vbasedev, &group->device_list, next) {
        if (vbasedev->type != VFIO_DEVICE_TYPE_PCI) {
            cpr_add_blocker(tail, mode, vbasedev->name,
                            "only VFIO PCI devices can be kept");
        } else if (vbasedev->ram_block_discard_allowed) {
            cpr_add_blocker(tail, mode, vbasedev->name,
                            "a mediated device cannot keep a valid "
                            "address window");
        }
    }
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
            return false;
        }
    }
    return true;
}

/*
 * Register what the new process takes: when the VM is stopped for
 * execve, and for transfer mode both before the new process starts and
 * again once the VM is stopped, to see that nothing changed between.
 */
static void vfio_cpr_keep(bool keep)
{
    VFIOGroup *group;
    VFIODevice *vbasedev;

    QLIST_FOREACH(group, &vfio_group_list, next) {
        VFIOContainer *c = group->container;

        cpr_keep_fd("vfio-group", group->groupid, group->fd, keep);
        cpr_keep_fd("vfio-container", group->groupid, c->fd, keep);
        QLIST_FOREACH(vbasedev, &group->device_list, next) {
            vfio_cpr_save_device(vbasedev, keep);
        }
        /* A container's mappings go once, under its first group. */
        if (group == QLIST_FIRST(&c->group_list)) {
            vfio_cpr_keep_ranges(c, group->groupid, keep);
        }
    }
}
CPR_KEEPER(vfio_cpr_keep)

static int vfio_cpr_exec(Error **errp)
{
    VFIOGroup *group;

    QLIST_FOREACH(group, &vfio_group_list, next) {
        if (group == QLIST_FIRST(&group->container->group_list) &&
            !vfio_cpr_invalidate(group->container, errp)) {
            return -1;
        }
    }
    return 0;
}

/* The update failed: every mapping gets this process's address back. */
static void vfio_cpr_take_back(void)
{
    VFIOGroup *group;
    Error *err = NULL;
    guint i;

    QLIST_FOREACH(group, &vfio_group_list, next) {
        VFIOContainer *c = group->container;

        if (group != QLIST_FIRST(&c->group_list)) {
            continue;
        }
        for (i = 0; c->cpr_ranges && i < c->cpr_ranges->len; i++) {
            VFIODMARange *r = &g_array_index(c->cpr_ranges, VFIODMARange, i);

            if (!vfio_cpr_point(c, r->iova, r->size, r->vaddr, &err)) {
                error_report_err(err);
                err = NULL;
            }
        }
    }
}

/* The new process has the VM's state: its mappings are its own now. */
static int vfio_cpr_loaded(Error **errp)
{
    VFIOGroup *group;
    VFIODevice *vbasedev;
    bool later;

    QLIST_FOREACH(group, &vfio_group_list, next) {
        if (!vfio_cpr_container_take(group->container, errp)) {
            return -1;
        }
        QLIST_FOREACH(vbasedev, &group->device_list, next) {
            vbasedev->cpr_resume = false;
        }
    }
    /* A transfer changes the IOMMU's map only once this process has the VM */
    later = cpr_transfer_defer(vfio_cpr_reconcile, NULL);
    if (!later) {
        vfio_cpr_reconcile(NULL);
    }
    return 0;
}

static int vfio_cpr_notify(NotifierWithReturn *n, void *data)
{
    CprNotifyData *d = data;

    switch (d->event) {
    case CPR_EVENT_EXEC:
        return vfio_cpr_exec(d->errp);
    case CPR_EVENT_EXEC_FAILED:
    case CPR_EVENT_TRANSFER_FAILED:
        vfio_cpr_take_back();
        break;
    case CPR_EVENT_LOADED:
        return vfio_cpr_loaded(d->errp);
    default:
        break;
    }
    return 0;
}

static NotifierWithReturn vfio_cpr_notifier = { .notify = vfio_cpr_notify };

/*
 * Whether re-pointing a mapping from another process moves the
 * locked-memory charge of its pinned pages there (Linux 6.3, and 6.2.3,
 * 6.1.16, 5.15.99 in the stable series).  Without it the charge stays
 * with the old process and goes with it.  Version strings of distribution
 * kernels do not tell; the same kernel series made VFIO_UPDATE_VADDR a
 * property of a container with an IOMMU set, so a new container without
 * one answers 0 where such a container answers 1.  -1: cannot tell.
 */
static int vfio_cpr_charge_moves = -1;

static void vfio_cpr_probe_kernel(void)
{
    int fd = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);

    if (fd >= 0) {
        vfio_cpr_charge_moves =
            ioctl(fd, VFIO_CHECK_EXTENSION, VFIO_UPDATE_VADDR) == 0;
        close(fd);
    }
}

/* What keeps cprsave from updating a VM with these devices */
static void vfio_cpr_blockers(CprBlockerList ***tail)
{
    static const CprMode modes[] = { CPR_MODE_RESTART, CPR_MODE_TRANSFER };
    VFIOGroup *group;
    VFIODevice *vbasedev;
    int m;

    for (m = 0; m < ARRAY_SIZE(modes); m++) {
        QLIST_FOREACH(group, &vfio_group_list, next) {
            vfio_cpr_group_blockers(tail, modes[m], group);
        }
    }
    QLIST_FOREACH(group, &vfio_group_list, next) {
        QLIST_FOREACH(vbasedev, &group->device_list, next) {
            cpr_add_blocker(tail, CPR_MODE_REBOOT, vbasedev->name,
                            "a device passed through with VFIO loses its "
                            "state when the host reboots; unplug it "
                            "(device_del) before cprsave reboot");
        }
        if (vfio_cpr_charge_moves != 1) {
            cpr_add_blocker(tail, CPR_MODE_TRANSFER, "vfio",
                            "group %d: %s the device's pinned memory to "
                            "another process (that needs Linux 6.3, or "
                            "6.1.16, 5.15.99); use mode 'restart'",
                            group->groupid, vfio_cpr_charge_moves ?
                            "cannot tell whether this kernel can charge" :
                            "this kernel cannot charge");
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
        vfio_cpr_probe_kernel();
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
