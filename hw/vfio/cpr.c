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
 * list of mappings (IOVA, size, RAM block, offset) goes with the device
 * state (section "vfio-cpr-dma"), saved once the VM is stopped.  Until
 * it has loaded the VM's state, the new process changes nothing in the
 * IOMMU: it holds the sections its memory listener adds.  Once the state
 * is loaded, each kept mapping that a held section matches is pointed at
 * the address the same RAM has in the new process
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
    bool repointed;
} VFIOCprOld;

/* A section of the new process's memory map, held until the VM is loaded */
typedef struct VFIOCprSection {
    hwaddr iova;
    uint64_t size;
    void *vaddr;
    bool readonly;
} VFIOCprSection;

static bool vfio_cpr_hooked;

static char *vfio_cpr_dev_name(const char *name)
{
    return g_strdup_printf("vfio-device:%s", name);
}

static char *vfio_cpr_irq_name(VFIODevice *vbasedev, const char *kind)
{
    return g_strdup_printf("vfio-irq:%s:%s", vbasedev->name, kind);
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

/*
 * The DMA mappings of a container, in the device state that cprsave
 * saves (a section "vfio-cpr-dma" per container, its first group's
 * number as instance id): what the process that loads it finds in the
 * IOMMU
 */

typedef struct VFIOCprDmaRecord {
    uint64_t iova;
    uint64_t size;
    uint32_t idstr_len;         /* with its NUL */
    uint8_t *idstr;             /* RAM block and offset it maps */
    uint64_t offset;
} VFIOCprDmaRecord;

typedef struct VFIOCprDmaList {
    VFIOContainer *c;
    int32_t count;
    VFIOCprDmaRecord *maps;
    int32_t started;            /* loading: elements initialised so far */
} VFIOCprDmaList;

/* The list being loaded, whose elements vmstate allocates uninitialised */
static VFIOCprDmaList *vfio_cpr_dma_loading;

/* Bounds checked before a length or count sizes an allocation */
#define VFIO_CPR_MAX_IDSTR      256
#define VFIO_CPR_MAX_MAPPINGS   (1 << 20)

/* An element of the array vmstate allocates: start from zero */
static int vfio_cpr_dma_record_pre_load(void *opaque)
{
    memset(opaque, 0, sizeof(VFIOCprDmaRecord));
    vfio_cpr_dma_loading->started++;
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

static bool vfio_cpr_dma_needed(void *opaque)
{
    return cpr_save_in_progress();
}

/* @loaded: the strings are the list's own, in its first @started maps */
static void vfio_cpr_dma_list_clear(VFIOCprDmaList *l, bool loaded)
{
    int i;

    for (i = 0; loaded && l->maps && i < l->started; i++) {
        g_free(l->maps[i].idstr);
    }
    g_clear_pointer(&l->maps, g_free);
    l->count = 0;
    l->started = 0;
}

static int vfio_cpr_dma_pre_save(void *opaque)
{
    VFIOCprDmaList *l = opaque;
    GArray *ranges = l->c->cpr_ranges;
    int i;

    vfio_cpr_dma_list_clear(l, true);
    l->count = ranges ? ranges->len : 0;
    l->maps = g_new0(VFIOCprDmaRecord, l->count);
    for (i = 0; i < l->count; i++) {
        VFIODMARange *r = &g_array_index(ranges, VFIODMARange, i);
        ram_addr_t offset = 0;
        RAMBlock *rb = qemu_ram_block_from_host(r->vaddr, false, &offset);
        const char *idstr = vfio_cpr_rb_name(rb);

        l->maps[i] = (VFIOCprDmaRecord) {
            .iova = r->iova, .size = r->size, .offset = offset,
            .idstr_len = strlen(idstr) + 1, .idstr = (uint8_t *)idstr,
        };
    }
    return 0;
}

static int vfio_cpr_dma_post_save(void *opaque)
{
    vfio_cpr_dma_list_clear(opaque, false);
    return 0;
}

static int vfio_cpr_dma_pre_load(void *opaque)
{
    vfio_cpr_dma_list_clear(opaque, true);
    vfio_cpr_dma_loading = opaque;
    return 0;
}

static void vfio_cpr_old_free(gpointer p)
{
    g_free(((VFIOCprOld *)p)->idstr);
}

/* In the new process: the old process's mappings of this container */
static int vfio_cpr_dma_post_load(void *opaque, int version_id)
{
    VFIOCprDmaList *l = opaque;
    VFIOContainer *c = l->c;
    int i;

    if (c->cpr_old) {
        g_array_free(c->cpr_old, true);
    }
    c->cpr_old = g_array_new(false, false, sizeof(VFIOCprOld));
    g_array_set_clear_func(c->cpr_old, vfio_cpr_old_free);
    for (i = 0; i < l->count; i++) {
        VFIOCprOld old = {
            .iova = l->maps[i].iova,
            .size = l->maps[i].size,
            .idstr = (char *)g_steal_pointer(&l->maps[i].idstr),
            .offset = l->maps[i].offset,
        };

        g_array_append_val(c->cpr_old, old);
    }
    vfio_cpr_dma_list_clear(l, true);
    return 0;
}

static bool vfio_cpr_dma_list_count_ok(void *opaque, int version_id)
{
    VFIOCprDmaList *l = opaque;

    return l->count >= 0 && l->count <= VFIO_CPR_MAX_MAPPINGS;
}

static const VMStateDescription vmstate_vfio_cpr_dma = {
    .name = "vfio-cpr-dma",
    .version_id = 1,
    .minimum_version_id = 1,
    .needed = vfio_cpr_dma_needed,
    .pre_save = vfio_cpr_dma_pre_save,
    .post_save = vfio_cpr_dma_post_save,
    .pre_load = vfio_cpr_dma_pre_load,
    .post_load = vfio_cpr_dma_post_load,
    .fields = (VMStateField[]) {
        VMSTATE_INT32(count, VFIOCprDmaList),
        VMSTATE_VALIDATE("count", vfio_cpr_dma_list_count_ok),
        VMSTATE_STRUCT_VARRAY_ALLOC(maps, VFIOCprDmaList, count, 0,
                                    vmstate_vfio_cpr_dma_record,
                                    VFIOCprDmaRecord),
        VMSTATE_END_OF_LIST()
    },
};

/*
 * Every container: its mappings go with the device state.  In a process
 * that took it over, nothing changes in the IOMMU until the VM's state is
 * loaded: the sections of the memory map are held (cpr_seen).
 */
void vfio_cpr_container_init(VFIOContainer *c, int groupid)
{
    VFIOCprDmaList *l = g_new0(VFIOCprDmaList, 1);

    l->c = c;
    c->cpr_dma = l;
    vmstate_register(NULL, groupid, &vmstate_vfio_cpr_dma, l);
    if (c->cpr_kept) {
        c->cpr_seen = g_array_new(false, false, sizeof(VFIOCprSection));
    }
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
 * In the new process, until the VM's state is loaded: hold every section
 * the memory listener adds.  Nothing changes in the IOMMU: the device
 * works for the old view of memory, and for transfer mode the old
 * process still runs the VM.
 */
bool vfio_cpr_dma_map(VFIOContainer *c, hwaddr iova, uint64_t size,
                      void *vaddr, bool readonly, int *ret)
{
    VFIOCprSection sec = { iova, size, vaddr, readonly };

    if (!c->cpr_seen) {
        return false;
    }
    trace_vfio_cpr_dma_defer(iova, size);
    g_array_append_val(c->cpr_seen, sec);
    *ret = 0;
    return true;
}

bool vfio_cpr_dma_unmap(VFIOContainer *c, hwaddr iova, uint64_t size)
{
    guint i = 0;

    if (!c->cpr_seen) {
        return false;
    }
    while (i < c->cpr_seen->len) {
        VFIOCprSection *sec = &g_array_index(c->cpr_seen, VFIOCprSection, i);

        if (sec->iova >= iova && sec->iova + sec->size <= iova + size) {
            g_array_remove_index(c->cpr_seen, i);
        } else {
            i++;
        }
    }
    return true;
}

/* The section held for the old mapping @old, or -1 */
static int vfio_cpr_section_of(VFIOContainer *c, VFIOCprOld *old)
{
    guint i;

    for (i = 0; i < c->cpr_seen->len; i++) {
        VFIOCprSection *sec = &g_array_index(c->cpr_seen, VFIOCprSection, i);
        ram_addr_t offset = 0;
        RAMBlock *rb;

        if (sec->iova != old->iova || sec->size != old->size) {
            continue;
        }
        rb = qemu_ram_block_from_host(sec->vaddr, false, &offset);
        if (!strcmp(old->idstr, vfio_cpr_rb_name(rb)) &&
            offset == old->offset) {
            return i;
        }
    }
    return -1;
}

/*
 * The VM's state is loaded: point each kept mapping that the loaded
 * memory map has at this process.
 */
static bool vfio_cpr_container_take(VFIOContainer *c, Error **errp)
{
    Error *err = NULL;
    guint i;

    if (c->cpr_seen && !c->cpr_old) {
        error_setg(errp, "vfio: the VM's state has no list of the DMA "
                   "mappings this process took over");
        return false;
    }
    /* All that can be taken; the first failure is the error */
    for (i = 0; c->cpr_seen && i < c->cpr_old->len; i++) {
        VFIOCprOld *old = &g_array_index(c->cpr_old, VFIOCprOld, i);
        int s = old->repointed ? -1 : vfio_cpr_section_of(c, old);
        VFIOCprSection sec;

        if (s < 0) {
            continue;
        }
        sec = g_array_index(c->cpr_seen, VFIOCprSection, s);
        if (!vfio_cpr_point(c, old->iova, old->size, sec.vaddr,
                            err ? NULL : &err)) {
            continue;
        }
        old->repointed = true;
        g_array_remove_index(c->cpr_seen, s);
        vfio_cpr_dma_mapped(c, sec.iova, sec.size, sec.vaddr, sec.readonly);
    }
    if (err) {
        error_propagate(errp, err);
        return false;
    }
    return true;
}

/* Then drop what the old view had alone, map what it lacked. */
static void vfio_cpr_container_reconcile(VFIOContainer *c)
{
    struct vfio_iommu_type1_dma_unmap unmap = { .argsz = sizeof(unmap) };
    g_autoptr(GArray) seen = g_steal_pointer(&c->cpr_seen);
    guint i;

    for (i = 0; seen && c->cpr_old && i < c->cpr_old->len; i++) {
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
    if (c->cpr_old) {
        g_array_free(c->cpr_old, true);
        c->cpr_old = NULL;
    }
    for (i = 0; seen && i < seen->len; i++) {
        VFIOCprSection *sec = &g_array_index(seen, VFIOCprSection, i);

        if (vfio_container_dma_map(c, sec->iova, sec->size, sec->vaddr,
                                   sec->readonly)) {
            error_report("vfio: cannot map 0x%" HWADDR_PRIx "+0x%" PRIx64
                         " after the VM was loaded", sec->iova, sec->size);
        }
    }
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
    Error *err = NULL;
    bool transfer;

    QLIST_FOREACH(group, &vfio_group_list, next) {
        if (group == QLIST_FIRST(&group->container->group_list)) {
            vfio_cpr_container_take(group->container, err ? NULL : &err);
        }
        QLIST_FOREACH(vbasedev, &group->device_list, next) {
            vbasedev->cpr_resume = false;
        }
    }
    /* A transfer changes the IOMMU's map only once this process has the VM */
    transfer = cpr_transfer_defer(vfio_cpr_reconcile, NULL);
    if (err && transfer) {
        /* Refused: the old process takes its mappings back */
        error_propagate(errp, err);
        return -1;
    }
    if (err) {
        /* After execve nobody else can have the VM: map what can be */
        error_report_err(err);
    }
    if (!transfer) {
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
            cpr_add_blocker(tail, CPR_MODE_FORK, vbasedev->name,
                            "a device passed through with VFIO cannot be "
                            "in two VMs; unplug it (device_del) before "
                            "cpr-fork");
            cpr_add_blocker(tail, CPR_MODE_CHECKPOINT, vbasedev->name,
                            "a device passed through with VFIO writes guest "
                            "RAM by DMA, which userfaultfd cannot catch; "
                            "unplug it (device_del) before cpr-checkpoint");
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
    if (c->cpr_dma) {
        VFIOCprDmaList *l = c->cpr_dma;

        vmstate_unregister(NULL, &vmstate_vfio_cpr_dma, l);
        vfio_cpr_dma_list_clear(l, true);
        g_free(l);
    }
    if (c->cpr_ranges) {
        g_array_free(c->cpr_ranges, true);
    }
    if (c->cpr_old) {
        g_array_free(c->cpr_old, true);
    }
    if (c->cpr_seen) {
        g_array_free(c->cpr_seen, true);
    }
}
