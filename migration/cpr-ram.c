/*
 * CPR: guest RAM kept in shared memory across execve
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * With -machine memfd-alloc=on every RAM block that would otherwise be
 * anonymous memory is a memfd mapped MAP_SHARED.  cprsave registers the
 * descriptor of every migratable block under the block's migration name.
 * The new process allocates its blocks as usual; when a block receives
 * its migration name, the inherited memfd is mapped over it at the same
 * host address, so nothing that already holds the address has to change
 * and no page is copied or cleared.
 */

#include "qemu/osdep.h"
#include <sys/ioctl.h>
#include "qemu/madvise.h"
#include "qemu/memfd.h"
#include "qemu/mmap-alloc.h"
#include "qemu/units.h"
#include "qapi/error.h"
#include "exec/ramblock.h"
#include "exec/ram_addr.h"
#include "exec/exec-all.h"
#include "sysemu/tcg.h"
#include "hw/boards.h"
#include "sysemu/hostmem.h"
#include "migration/cpr.h"
#include "cpr-internal.h"
#include "trace.h"

/* Inherited blocks: idstr -> "" when adopted, else why not */
static GHashTable *cpr_ram_adopted;

static char *cpr_ram_fd_name(RAMBlock *rb)
{
    return g_strdup_printf("ram:%s", rb->idstr);
}

bool cpr_memfd_alloc_enabled(void)
{
    return current_machine && current_machine->memfd_alloc;
}

void *cpr_ram_alloc_memfd(RAMBlock *rb, Error **errp)
{
    uint32_t map_flags = QEMU_MAP_SHARED;
    void *host;
    int fd;

    fd = qemu_memfd_create(memory_region_name(rb->mr), rb->max_length,
                           false, 0, 0, errp);
    if (fd < 0) {
        return NULL;
    }
    if (rb->flags & RAM_NORESERVE) {
        map_flags |= QEMU_MAP_NORESERVE;
    }
    rb->mr->align = QEMU_VMALLOC_ALIGN;
    host = qemu_ram_mmap(fd, rb->max_length, rb->mr->align, map_flags, 0);
    if (host == MAP_FAILED) {
        error_setg_errno(errp, errno, "cannot map memfd for guest memory '%s'",
                         memory_region_name(rb->mr));
        close(fd);
        return NULL;
    }
    rb->fd = fd;
    rb->flags |= RAM_SHARED;
    trace_cpr_ram_alloc_memfd(memory_region_name(rb->mr), rb->max_length, fd);
    return host;
}

static void cpr_ram_adopt_status_of(const char *idstr, const char *why)
{
    if (!cpr_ram_adopted) {
        cpr_ram_adopted = g_hash_table_new_full(g_str_hash, g_str_equal,
                                                g_free, g_free);
    }
    g_hash_table_insert(cpr_ram_adopted, g_strdup(idstr), g_strdup(why));
}

static void cpr_ram_adopt_status(RAMBlock *rb, const char *why)
{
    cpr_ram_adopt_status_of(rb->idstr, why);
}

/*
 * Kept memfds that a memory-backend-memfd took when it allocated its
 * block, before the block had its migration name: name -> descriptor + 1
 */
static GHashTable *cpr_ram_taken_early;

int cpr_ram_take_for_backend(const char *name, uint64_t size)
{
    g_autofree char *key = g_strdup_printf("ram:%s", name);
    struct stat st;
    int fd;

    /* A fork child maps its parent's memory copy-on-write, later */
    if (!cpr_is_incoming() || cpr_fork_is_child()) {
        return -1;
    }
    fd = cpr_take_fd(key, 0);
    if (fd < 0) {
        return -1;
    }
    if (fstat(fd, &st) < 0 || st.st_size < size) {
        cpr_ram_adopt_status_of(name, "the kept memory is smaller than the "
                                "block");
        close(fd);
        return -1;
    }
    if (!cpr_ram_taken_early) {
        cpr_ram_taken_early = g_hash_table_new_full(g_str_hash, g_str_equal,
                                                    g_free, NULL);
    }
    g_hash_table_insert(cpr_ram_taken_early, g_strdup(name),
                        GINT_TO_POINTER(fd + 1));
    trace_cpr_ram_take_for_backend(name, size, fd);
    return fd;
}

/* @rb maps the kept memory @fd: what the first process did to its block */
static void cpr_ram_adopted_done(RAMBlock *rb, int fd)
{
    if (!machine_dump_guest_core(current_machine)) {
        qemu_madvise(rb->host, rb->max_length, QEMU_MADV_DONTDUMP);
    }
    qemu_madvise(rb->host, rb->max_length, QEMU_MADV_HUGEPAGE);
    qemu_madvise(rb->host, rb->max_length, QEMU_MADV_DONTFORK);
    cpr_ram_adopt_status(rb, "");
    trace_cpr_ram_adopt(rb->idstr, rb->max_length, fd);
}

/*
 * A fork child: per RAM block (by id), the memfds its guest RAM maps
 * copy-on-write, as layers: the first covers the block, each later one
 * only where it has data (a fork of a child: the pages that child had
 * written at its fork point).  At a fork of this child they are served
 * with one more, this child's own pages.
 */
static GHashTable *cpr_ram_layers;

static GArray *cpr_ram_layers_of(RAMBlock *rb)
{
    GArray *l;

    if (!cpr_ram_layers) {
        cpr_ram_layers = g_hash_table_new(g_str_hash, g_str_equal);
    }
    l = g_hash_table_lookup(cpr_ram_layers, rb->idstr);
    if (!l) {
        l = g_array_new(false, false, sizeof(int));
        g_hash_table_insert(cpr_ram_layers, rb->idstr, l);
    }
    return l;
}

/* Map the extents of data of layer @fd over @rb, copy-on-write */
static bool cpr_ram_map_layer(RAMBlock *rb, int fd)
{
    int flags = MAP_PRIVATE | MAP_FIXED;
    off_t data, hole;

    if (rb->flags & RAM_NORESERVE) {
        flags |= MAP_NORESERVE;
    }
    for (data = 0; data < rb->max_length; data = hole) {
        data = lseek(fd, data, SEEK_DATA);
        if (data < 0 || data >= rb->max_length) {
            break;
        }
        hole = lseek(fd, data, SEEK_HOLE);
        hole = hole < 0 ? rb->max_length : MIN(hole, rb->max_length);
        if (mmap(rb->host + data, hole - data, PROT_READ | PROT_WRITE, flags,
                 fd, data) == MAP_FAILED) {
            return false;
        }
    }
    return true;
}

/*
 * A fork child's own memfds, which its parent's memory replaced: closed
 * (their pages freed) once the child runs, not on the way there
 */
static GArray *cpr_ram_replaced;

static void cpr_ram_replace_fd(RAMBlock *rb)
{
    if (rb->fd < 0) {
        return;
    }
    if (!cpr_ram_replaced) {
        cpr_ram_replaced = g_array_new(false, false, sizeof(int));
    }
    g_array_append_val(cpr_ram_replaced, rb->fd);
    rb->fd = -1;
}

void cpr_ram_adopt(RAMBlock *rb)
{
    g_autofree char *name = NULL;
    struct stat st;
    void *addr;
    /* A fork child maps its parent's memory copy-on-write */
    bool child = cpr_fork_is_child();
    int flags = (child ? MAP_PRIVATE : MAP_SHARED) | MAP_FIXED;
    int fd;

    if (!cpr_is_incoming()) {
        return;
    }
    /* Its backend took the kept memfd already (the same name) */
    if (cpr_ram_taken_early && rb->fd >= 0 &&
        GPOINTER_TO_INT(g_hash_table_lookup(cpr_ram_taken_early,
                                            rb->idstr)) == rb->fd + 1) {
        g_hash_table_remove(cpr_ram_taken_early, rb->idstr);
        cpr_ram_adopted_done(rb, rb->fd);
        return;
    }
    name = cpr_ram_fd_name(rb);
    fd = cpr_take_fd(name, 0);
    if (fd < 0) {
        return;
    }
    if (!rb->host || (rb->flags & RAM_PREALLOC)) {
        cpr_ram_adopt_status(rb, "its memory is provided by a device");
        goto fail;
    }
    if (fstat(fd, &st) < 0 || st.st_size < rb->max_length) {
        cpr_ram_adopt_status(rb, "the kept memory is smaller than the block");
        goto fail;
    }
    if (rb->flags & RAM_NORESERVE) {
        flags |= MAP_NORESERVE;
    }
    addr = mmap(rb->host, rb->max_length, PROT_READ | PROT_WRITE, flags,
                fd, 0);
    if (addr == MAP_FAILED) {
        cpr_ram_adopt_status(rb, "the kept memory cannot be mapped");
        goto fail;
    }
    if (child) {
        GArray *layers = cpr_ram_layers_of(rb);
        int id;

        cpr_ram_replace_fd(rb);

        /* Not this process's memory to discard; kept for a fork of it */
        g_array_append_val(layers, fd);
        for (id = 1; (fd = cpr_take_fd(name, id)) >= 0; id++) {
            g_array_append_val(layers, fd);
            if (!cpr_ram_map_layer(rb, fd)) {
                cpr_ram_adopt_status(rb, "a layer of the fork point cannot "
                                     "be mapped (too many extents for "
                                     "vm.max_map_count?)");
                return;
            }
        }
        rb->flags &= ~RAM_SHARED;
    } else {
        if (rb->fd >= 0) {
            close(rb->fd);
        }
        rb->fd = fd;
        rb->flags |= RAM_SHARED;
    }
    cpr_ram_adopted_done(rb, fd);
    return;

fail:
    close(fd);
}

/* The blocks a fork parent keeps to itself, children having their own */
static CprExclude *cpr_ram_fork_excluded;

void cpr_ram_fork_exclude(CprExclude *x)
{
    cpr_exclude_free(cpr_ram_fork_excluded);
    cpr_ram_fork_excluded = x;
}

/* A block of guest RAM that forks: the children map it copy-on-write */
static bool cpr_ram_forks(RAMBlock *rb)
{
    return qemu_ram_is_migratable(rb) &&
           !(cpr_ram_fork_excluded &&
             cpr_exclude_has_block(cpr_ram_fork_excluded, rb));
}

static int cpr_ram_describe_one(RAMBlock *rb, void *opaque)
{
    GArray *table = opaque;
    CprRamEntry e = { 0 };

    if (!qemu_ram_is_migratable(rb)) {
        return 0;
    }
    e.idstr = g_strdup(rb->idstr);
    e.idstr_len = strlen(rb->idstr) + 1;
    e.used_length = rb->used_length;
    e.max_length = rb->max_length;
    e.own = !cpr_ram_forks(rb);
    g_array_append_val(table, e);
    return 0;
}

void cpr_ram_describe(CprFile *cf)
{
    GArray *table = g_array_new(false, true, sizeof(CprRamEntry));

    qemu_ram_foreach_block(cpr_ram_describe_one, table);
    cf->nr_ram = table->len;
    cf->ram = (CprRamEntry *)g_array_free(table, false);
}

static CprRamEntry *cpr_ram_find(CprFile *cf, const char *idstr)
{
    int i;

    for (i = 0; i < cf->nr_ram; i++) {
        if (!strcmp(cf->ram[i].idstr, idstr)) {
            return &cf->ram[i];
        }
    }
    return NULL;
}

typedef struct CprRamCheck {
    CprFile *cf;
    bool kept;
    Error **errp;
} CprRamCheck;

static int cpr_ram_check_one(RAMBlock *rb, void *opaque)
{
    CprRamCheck *c = opaque;
    const char *why;

    if (!qemu_ram_is_migratable(rb)) {
        return 0;
    }
    if (!cpr_ram_find(c->cf, rb->idstr)) {
        error_setg(c->errp, "RAM block '%s' is not in the state file",
                   rb->idstr);
        return -1;
    }
    if (!c->kept) {
        return 0;
    }
    why = cpr_ram_adopted ? g_hash_table_lookup(cpr_ram_adopted, rb->idstr)
                          : NULL;
    /* A fork parent keeps some to itself: the child uses its own */
    if (!why && cpr_fork_is_child() && cpr_ram_find(c->cf, rb->idstr)->own) {
        if (!qemu_ram_is_shared(rb) || rb->fd < 0) {
            error_setg(c->errp, "RAM block '%s' is this VM's own (the fork "
                       "parent excludes it) but not shared memory: the host "
                       "could not reach it", rb->idstr);
            return -1;
        }
        return 0;
    }
    if (!why) {
        error_setg(c->errp, "RAM block '%s' was not kept across exec",
                   rb->idstr);
        return -1;
    }
    if (*why) {
        error_setg(c->errp, "RAM block '%s' was not kept across exec: %s",
                   rb->idstr, why);
        return -1;
    }
    return 0;
}

bool cpr_ram_check(CprFile *cf, bool kept, Error **errp)
{
    CprRamCheck c = { cf, kept, errp };
    int i;

    for (i = 0; i < cf->nr_ram; i++) {
        CprRamEntry *e = &cf->ram[i];
        RAMBlock *rb = qemu_ram_block_by_name(e->idstr);

        if (!rb) {
            error_setg(errp, "state file has RAM block '%s', which this "
                       "VM does not have", e->idstr);
            return false;
        }
        if (rb->max_length != e->max_length) {
            error_setg(errp, "RAM block '%s' has size 0x%" PRIx64
                       " in the state file but 0x" RAM_ADDR_FMT " here",
                       e->idstr, e->max_length, rb->max_length);
            return false;
        }
        if (e->used_length > rb->max_length) {
            error_setg(errp, "RAM block '%s' uses 0x%" PRIx64 " bytes in the "
                       "state file, more than its size", e->idstr,
                       e->used_length);
            return false;
        }
    }
    return !qemu_ram_foreach_block(cpr_ram_check_one, &c);
}

bool cpr_ram_resize(CprFile *cf, Error **errp)
{
    int i;

    for (i = 0; i < cf->nr_ram; i++) {
        CprRamEntry *e = &cf->ram[i];
        RAMBlock *rb = qemu_ram_block_by_name(e->idstr);

        if (rb->used_length != e->used_length &&
            qemu_ram_resize(rb, e->used_length, errp) < 0) {
            return false;
        }
    }
    return true;
}

void cpr_ram_load_done(void)
{
    guint i;

    g_clear_pointer(&cpr_ram_adopted, g_hash_table_destroy);
    for (i = 0; cpr_ram_replaced && i < cpr_ram_replaced->len; i++) {
        close(g_array_index(cpr_ram_replaced, int, i));
    }
    g_clear_pointer(&cpr_ram_replaced, g_array_unref);
}

typedef struct CprRamBlockers {
    CprBlockerList ***tail;
    CprMode mode;
} CprRamBlockers;

static int cpr_ram_blocker_one(RAMBlock *rb, void *opaque)
{
    CprRamBlockers *b = opaque;
    const char *gone = b->mode == CPR_MODE_RESTART ? "which exec discards"
                       : "which another process cannot map";
    HostMemoryBackend *be = (HostMemoryBackend *)
        object_dynamic_cast(rb->mr->owner, TYPE_MEMORY_BACKEND);

    if (!qemu_ram_is_migratable(rb)) {
        return 0;
    }
    if (rb->fd < 0 && b->mode != CPR_MODE_FORK &&
        ram_block_discard_is_disabled()) {
        /* Its pages cannot change under the device (cpr-ram-move.c) */
        cpr_add_blocker(b->tail, b->mode, rb->idstr,
                        "guest RAM is anonymous memory, %s, and pinned for "
                        "device DMA (VFIO), so cprsave cannot move it into "
                        "a memfd; start QEMU with -machine memfd-alloc=on "
                        "or use memory-backend-memfd", gone);
    } else if (rb->fd < 0 && b->mode != CPR_MODE_FORK && be &&
               be->policy != HOST_MEM_POLICY_DEFAULT) {
        cpr_add_blocker(b->tail, b->mode, rb->idstr,
                        "guest RAM is anonymous memory, %s, with a host "
                        "NUMA policy (policy, host-nodes), which cprsave's "
                        "move into a memfd would not keep; use "
                        "memory-backend-memfd", gone);
    } else if (rb->fd < 0 && b->mode != CPR_MODE_FORK &&
               cpr_snapshot_exists()) {
        /* Both would take the pages dirtied from the same log */
        cpr_add_blocker(b->tail, b->mode, rb->idstr,
                        "guest RAM is anonymous memory, %s, which cprsave "
                        "moves into a memfd while an in-process snapshot "
                        "tracks its dirty pages; drop the snapshot "
                        "(cpr-snapshot-drop) first", gone);
    } else if (rb->fd < 0 && (b->mode == CPR_MODE_FORK || !rb->host ||
                              (rb->flags & RAM_PREALLOC))) {
        cpr_add_blocker(b->tail, b->mode, rb->idstr,
                        "guest RAM is anonymous memory, %s; start QEMU "
                        "with -machine memfd-alloc=on or use "
                        "memory-backend-memfd", gone);
    } else if (rb->fd >= 0 && !qemu_ram_is_shared(rb)) {
        cpr_add_blocker(b->tail, b->mode, rb->idstr,
                        "guest RAM is a private mapping, %s; use share=on "
                        "on its backend", gone);
    }
    return 0;
}

/* Free huge pages of @size bytes that nobody has reserved yet */
static uint64_t cpr_ram_free_huge_pages(size_t size)
{
    g_autofree char *dir = g_strdup_printf("/sys/kernel/mm/hugepages/"
                                           "hugepages-%zukB", size / KiB);
    g_autofree char *free_path = g_build_filename(dir, "free_hugepages", NULL);
    g_autofree char *resv_path = g_build_filename(dir, "resv_hugepages", NULL);
    g_autofree char *free_text = NULL, *resv_text = NULL;
    uint64_t free_pages, resv;

    if (!g_file_get_contents(free_path, &free_text, NULL, NULL) ||
        !g_file_get_contents(resv_path, &resv_text, NULL, NULL)) {
        return UINT64_MAX;
    }
    free_pages = g_ascii_strtoull(free_text, NULL, 10);
    resv = g_ascii_strtoull(resv_text, NULL, 10);
    return free_pages > resv ? free_pages - resv : 0;
}

static int cpr_ram_huge_need(RAMBlock *rb, void *opaque)
{
    GHashTable *need = opaque;
    size_t size = qemu_ram_pagesize(rb);
    gpointer key = GSIZE_TO_POINTER(size);
    struct stat st;

    /*
     * A file with a name (on hugetlbfs) is opened again by the new
     * binary, whose mapping shares the pages the file has; a
     * memory-backend-memfd takes the kept memfd when it allocates
     * (cpr_ram_take_for_backend, under the name its block then gets)
     */
    if (rb->fd >= 0 && fstat(rb->fd, &st) == 0 && st.st_nlink > 0) {
        return 0;
    }
    if (object_dynamic_cast(rb->mr->owner, "memory-backend-memfd") &&
        !strcmp(rb->idstr, memory_region_name(rb->mr))) {
        return 0;
    }
    if (qemu_ram_is_migratable(rb) && size > qemu_real_host_page_size()) {
        g_hash_table_insert(need, key, GSIZE_TO_POINTER(
            GPOINTER_TO_SIZE(g_hash_table_lookup(need, key)) +
            rb->max_length / size));
    }
    return 0;
}

/*
 * Restart: the new binary (or the old one, taking the VM back) maps each
 * huge-page block other than a memfd backend's of its own before it maps
 * the kept memfd over it, and exits if the pool cannot reserve those
 * pages: the VM would be lost
 */
static void cpr_ram_huge_blockers(CprBlockerList ***tail)
{
    g_autoptr(GHashTable) need = g_hash_table_new(NULL, NULL);
    GHashTableIter iter;
    gpointer key, value;

    qemu_ram_foreach_block(cpr_ram_huge_need, need);
    g_hash_table_iter_init(&iter, need);
    while (g_hash_table_iter_next(&iter, &key, &value)) {
        size_t size = GPOINTER_TO_SIZE(key);
        uint64_t avail = cpr_ram_free_huge_pages(size);

        if (avail < GPOINTER_TO_SIZE(value)) {
            cpr_add_blocker(tail, CPR_MODE_RESTART, "hugepages",
                            "the new binary needs %zu free huge pages of "
                            "%zu KiB for a moment (as many as guest RAM "
                            "has), and %" PRIu64 " are free; raise "
                            "vm.nr_hugepages or use transfer mode",
                            GPOINTER_TO_SIZE(value), size / KiB, avail);
        }
    }
}

void cpr_ram_add_blockers(CprBlockerList ***tail, CprMode mode)
{
    CprRamBlockers b = { .tail = tail, .mode = mode };

    qemu_ram_foreach_block(cpr_ram_blocker_one, &b);
    if (mode == CPR_MODE_RESTART) {
        cpr_ram_huge_blockers(tail);
    }
}

static int cpr_ram_keep_one(RAMBlock *rb, void *opaque)
{
    g_autofree char *name = cpr_ram_fd_name(rb);
    bool keep = GPOINTER_TO_INT(opaque);
    /* Anonymous RAM: the memfd cprsave moves it into */
    int fd = rb->fd >= 0 ? rb->fd : cpr_ram_move_fd(rb);

    cpr_keep_fd(name, 0, fd, keep && qemu_ram_is_migratable(rb) && fd >= 0);
    return 0;
}

/* The memfds of guest RAM cross execve */
static void cpr_ram_keep(bool keep)
{
    qemu_ram_foreach_block(cpr_ram_keep_one, GINT_TO_POINTER(keep));
}
CPR_KEEPER(cpr_ram_keep)

/* VM fork (cpr-fork.c) */

static int cpr_ram_fork_one(RAMBlock *rb, void *opaque)
{
    CprForkRam *r = opaque;
    GArray *layers = cpr_ram_layers ?
                     g_hash_table_lookup(cpr_ram_layers, rb->idstr) : NULL;
    int i;

    if (!cpr_ram_forks(rb)) {
        return 0;
    }
    if (layers) {
        for (i = 0; i < layers->len; i++) {
            g_ptr_array_add(r->names, cpr_ram_fd_name(rb));
            g_array_append_val(r->ids, i);
            g_array_append_val(r->fds, g_array_index(layers, int, i));
        }
    } else if (rb->fd >= 0) {
        i = 0;
        g_ptr_array_add(r->names, cpr_ram_fd_name(rb));
        g_array_append_val(r->ids, i);
        g_array_append_val(r->fds, rb->fd);
    }
    return 0;
}

void cpr_ram_fork_fds(CprForkRam *r)
{
    r->names = g_ptr_array_new_with_free_func(g_free);
    r->ids = g_array_new(false, false, sizeof(int));
    r->fds = g_array_new(false, false, sizeof(int));
    qemu_ram_foreach_block(cpr_ram_fork_one, r);
    g_ptr_array_add(r->names, NULL);
}

#define PAGEMAP_PRESENT (1ULL << 63)
#define PAGEMAP_SWAPPED (1ULL << 62)
#define PAGEMAP_FILE (1ULL << 61)       /* or shared anonymous */
#define PAGEMAP_BATCH 65536

/* A run of pages of a block (byte offsets); 0 or -errno */
typedef int CprRamRunFn(RAMBlock *rb, uint64_t start, uint64_t len,
                        void *opaque);

static bool cpr_ram_page_private(uint64_t pm)
{
    return (pm & (PAGEMAP_PRESENT | PAGEMAP_SWAPPED)) && !(pm & PAGEMAP_FILE);
}

/* Linux 6.7's PAGEMAP_SCAN, which older headers lack */
#define CPR_PAGE_IS_FILE (1 << 2)
#define CPR_PAGE_IS_PRESENT (1 << 3)
#define CPR_PAGE_IS_SWAPPED (1 << 4)

typedef struct CprPageRegion {
    uint64_t start;
    uint64_t end;
    uint64_t categories;
} CprPageRegion;

typedef struct CprPmScanArg {
    uint64_t size;
    uint64_t flags;
    uint64_t start;
    uint64_t end;
    uint64_t walk_end;
    uint64_t vec;
    uint64_t vec_len;
    uint64_t max_pages;
    uint64_t category_inverted;
    uint64_t category_mask;
    uint64_t category_anyof_mask;
    uint64_t return_mask;
} CprPmScanArg;

#define CPR_PAGEMAP_SCAN _IOWR('f', 16, CprPmScanArg)
#define CPR_PAGEMAP_SCAN_VEC 1024

/*
 * The runs of private pages of @rb by PAGEMAP_SCAN: only those come back,
 * where reading /proc/self/pagemap reads 8 bytes for every page.  1 if
 * the kernel has no PAGEMAP_SCAN, else 0 or -errno.
 */
static int cpr_ram_scan_private(int fd, RAMBlock *rb, CprRamRunFn *fn,
                                void *opaque)
{
    CprPageRegion vec[CPR_PAGEMAP_SCAN_VEC];
    uint64_t host = (uintptr_t)rb->host, end = host + rb->used_length;
    CprPmScanArg arg = {
        .size = sizeof(arg),
        .start = host,
        .end = end,
        .vec = (uintptr_t)vec,
        .vec_len = CPR_PAGEMAP_SCAN_VEC,
        /* not a file page, and present or in swap */
        .category_inverted = CPR_PAGE_IS_FILE,
        .category_mask = CPR_PAGE_IS_FILE,
        .category_anyof_mask = CPR_PAGE_IS_PRESENT | CPR_PAGE_IS_SWAPPED,
        .return_mask = CPR_PAGE_IS_PRESENT | CPR_PAGE_IS_SWAPPED,
    };
    int i, n, ret;

    while (arg.start < end) {
        n = ioctl(fd, CPR_PAGEMAP_SCAN, &arg);
        if (n < 0) {
            return errno == ENOTTY || errno == EINVAL ? 1 : -errno;
        }
        for (i = 0; i < n; i++) {
            ret = fn(rb, vec[i].start - host, vec[i].end - vec[i].start,
                     opaque);
            if (ret < 0) {
                return ret;
            }
        }
        arg.start = arg.walk_end;
    }
    return 0;
}

/*
 * Call @fn for each run of pages of @rb this process has its own copy of
 * (written through a copy-on-write mapping), as /proc/self/pagemap tells
 */
static int cpr_ram_private_runs(RAMBlock *rb, CprRamRunFn *fn, void *opaque)
{
    g_autofree uint64_t *pm = NULL;
    uint64_t page = qemu_real_host_page_size();
    uint64_t npages = rb->used_length / page, i, j, n, run;
    int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    int ret;

    if (fd < 0) {
        return -errno;
    }
    ret = cpr_ram_scan_private(fd, rb, fn, opaque);
    if (ret <= 0) {
        close(fd);
        return ret;
    }
    ret = 0;
    pm = g_new(uint64_t, PAGEMAP_BATCH);
    for (i = 0; i < npages && !ret; i += n) {
        n = MIN(PAGEMAP_BATCH, npages - i);
        if (pread(fd, pm, n * 8, ((uintptr_t)rb->host / page + i) * 8) !=
            n * 8) {
            ret = -EIO;
            break;
        }
        for (j = 0; j < n && !ret; j += run) {
            bool mine = cpr_ram_page_private(pm[j]);

            for (run = 1; j + run < n &&
                 cpr_ram_page_private(pm[j + run]) == mine; run++) {
                /* same kind */
            }
            if (mine) {
                ret = fn(rb, (i + j) * page, run * page, opaque);
            }
        }
    }
    close(fd);
    return ret;
}

typedef struct CprRamDelta {
    int fd;
    uint64_t bytes;
} CprRamDelta;

static int cpr_ram_delta_run(RAMBlock *rb, uint64_t start, uint64_t len,
                             void *opaque)
{
    CprRamDelta *d = opaque;

    if (!cpr_file_pwrite(d->fd, rb->host + start, len, start)) {
        return -errno;
    }
    d->bytes += len;
    return 0;
}

/*
 * Copy the pages of @rb this child has written into a new memfd at their
 * offsets, holes elsewhere: the top layer for children of this child
 */
static int cpr_ram_delta_one(RAMBlock *rb, void *opaque)
{
    Error **errp = opaque;
    GArray *layers = cpr_ram_layers ?
                     g_hash_table_lookup(cpr_ram_layers, rb->idstr) : NULL;
    CprRamDelta d = { 0 };
    int ret;

    if (*errp || !qemu_ram_is_migratable(rb) || !layers) {
        return 0;
    }
    d.fd = qemu_memfd_create(rb->idstr, rb->max_length, false, 0, 0, errp);
    if (d.fd < 0) {
        return 0;
    }
    ret = cpr_ram_private_runs(rb, cpr_ram_delta_run, &d);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "cannot copy the pages of '%s' this VM "
                         "wrote", rb->idstr);
        close(d.fd);
        return 0;
    }
    g_array_append_val(layers, d.fd);
    trace_cpr_ram_fork_delta(rb->idstr, d.bytes, layers->len);
    return 0;
}

bool cpr_ram_fork_delta(Error **errp)
{
    ERRP_GUARD();

    qemu_ram_foreach_block(cpr_ram_delta_one, errp);
    return !*errp;
}

static int cpr_ram_private_one(RAMBlock *rb, void *opaque)
{
    Error **errp = opaque;
    int flags = MAP_PRIVATE | MAP_FIXED;

    if (!cpr_ram_forks(rb) || rb->fd < 0 || *errp) {
        return 0;
    }
    if (rb->flags & RAM_NORESERVE) {
        flags |= MAP_NORESERVE;
    }
    if (mmap(rb->host, rb->max_length, PROT_READ | PROT_WRITE, flags,
             rb->fd, 0) == MAP_FAILED) {
        error_setg_errno(errp, errno, "cannot map '%s' copy-on-write",
                         rb->idstr);
    }
    return 0;
}

bool cpr_ram_fork_private(Error **errp)
{
    ERRP_GUARD();

    qemu_ram_foreach_block(cpr_ram_private_one, errp);
    return !*errp;
}

bool cpr_ram_fork_map_file(CprFile *cf, int fd, Error **errp)
{
    int i;

    for (i = 0; i < cf->nr_ram; i++) {
        CprRamEntry *e = &cf->ram[i];
        RAMBlock *rb = qemu_ram_block_by_name(e->idstr);
        uint64_t len = ROUND_UP(e->used_length, qemu_real_host_page_size());

        if (!rb || !qemu_ram_is_migratable(rb)) {
            error_setg(errp, "RAM block '%s' of '%s' is not in this VM",
                       e->idstr, cf->path);
            return false;
        }
        if (e->in_backend || !e->file_offset ||
            e->file_offset + e->used_length > cf->file_size) {
            error_setg(errp, "'%s' does not hold the pages of RAM block '%s'",
                       cf->path, e->idstr);
            return false;
        }
        if (e->used_length > rb->max_length || !rb->host ||
            (rb->flags & RAM_PREALLOC)) {
            error_setg(errp, "RAM block '%s' cannot map the %" PRIu64
                       " bytes of '%s'", e->idstr, e->used_length, cf->path);
            return false;
        }
        if (mmap(rb->host, len, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_FIXED, fd, e->file_offset) == MAP_FAILED) {
            error_setg_errno(errp, errno, "cannot map RAM block '%s' from "
                             "'%s'", e->idstr, cf->path);
            return false;
        }
        cpr_ram_replace_fd(rb);
        rb->flags &= ~RAM_SHARED;
        cpr_ram_adopt_status(rb, "");
        trace_cpr_ram_adopt(rb->idstr, len, fd);
    }
    return true;
}

static int cpr_ram_drop_run(RAMBlock *rb, uint64_t start, uint64_t len,
                            void *opaque)
{
    uint64_t *pages = opaque;

    if (qemu_madvise(rb->host + start, len, QEMU_MADV_DONTNEED)) {
        return -errno;
    }
#ifdef CONFIG_TCG
    /* Code translated from what the child wrote is gone with it */
    if (tcg_enabled()) {
        tb_invalidate_phys_range(rb->offset + start, rb->offset + start + len);
    }
#endif
    *pages += len / qemu_real_host_page_size();
    return 0;
}

/*
 * In a loaded child every migratable block maps the fork point: drop the
 * pages it has its own copies of.  Only those: the mappings of the others
 * stay, and need no fault when the guest touches them again.
 */
static int cpr_ram_drop_one(RAMBlock *rb, void *opaque)
{
    if (qemu_ram_is_migratable(rb) && rb->fd < 0 &&
        cpr_ram_private_runs(rb, cpr_ram_drop_run, opaque) < 0) {
        /* Everything, then, and all translated code */
        qemu_madvise(rb->host, rb->max_length, QEMU_MADV_DONTNEED);
        if (tcg_enabled()) {
            tb_flush(first_cpu);
        }
    }
    return 0;
}

uint64_t cpr_ram_fork_drop_private(void)
{
    uint64_t pages = 0;

    qemu_ram_foreach_block(cpr_ram_drop_one, &pages);
    return pages;
}
