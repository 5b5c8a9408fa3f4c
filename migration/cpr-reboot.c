/*
 * CPR reboot mode: the VM saved to a file that survives a host reboot
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * cprsave reboot writes the state file's envelope (cpr-file.c) and then
 * every page of guest RAM that is not zero, each RAM block at an aligned
 * offset after the envelope; zero pages stay holes.  RAM already in a
 * file that survives the reboot (a shared memory-backend-file on a disk
 * file system) is synced there instead of copied.  The file is fsynced,
 * renamed into place and its directory fsynced; the VM stays paused in
 * this process.
 *
 * A fresh QEMU started with -incoming defer loads it with cprload: only
 * the extents the file holds are read (SEEK_DATA/SEEK_HOLE), straight
 * into guest RAM.  Both directions run on a few threads, each taking
 * 64 MiB of RAM at a time, with O_DIRECT where the file system has it.
 */

#include "qemu/osdep.h"
#include <sys/vfs.h>
#include <linux/magic.h>
#include "qemu/atomic.h"
#include "qemu/cutils.h"
#include "qemu/thread.h"
#include "qemu/timer.h"
#include "qemu/units.h"
#include "qapi/error.h"
#include "exec/ramblock.h"
#include "exec/ram_addr.h"
#include "migration/cpr.h"
#include "migration/migration.h"
#include "sysemu/runstate.h"
#include "cpr-internal.h"
#include "trace.h"

#define CPR_REBOOT_ALIGN (2 * MiB)     /* of each block in the file */
#define CPR_REBOOT_CHUNK (64 * MiB)    /* of RAM per work item */
#define CPR_REBOOT_MAX_IO (16 * MiB)   /* per read or write */
#define CPR_REBOOT_PAGE 4096
#define CPR_REBOOT_THREADS 4

/* RAM of a block from @start to @end, at @file_offset + @start */
typedef struct CprRebootChunk {
    RAMBlock *rb;
    uint64_t start;
    uint64_t end;
    uint64_t file_offset;
    const unsigned long *skip;  /* pages of the block not to write, or NULL */
} CprRebootChunk;

typedef struct CprRebootJob {
    GArray *chunks;             /* CprRebootChunk */
    int (*fn)(struct CprRebootJob *j, CprRebootChunk *c);
    int fd;                     /* the state file */
    int direct_fd;              /* the same with O_DIRECT, or -1 */
    int next;                   /* the next chunk to take */
    int error;                  /* the first errno */
    uint64_t bytes;             /* read or written */
} CprRebootJob;

/* Whether a load wrote into guest RAM (so a next one must clear it) */
static bool cpr_reboot_ram_loaded;

/* Whether @rb's pages live in a file that a host reboot keeps */
static bool cpr_reboot_ram_in_backend(RAMBlock *rb)
{
    struct statfs sfs;

    if (rb->fd < 0 || !qemu_ram_is_shared(rb) || fstatfs(rb->fd, &sfs) < 0) {
        return false;
    }
    return sfs.f_type != TMPFS_MAGIC && sfs.f_type != HUGETLBFS_MAGIC &&
           sfs.f_type != RAMFS_MAGIC;
}

/* With @backend_ok, RAM in a file a reboot keeps is not copied */
static void cpr_reboot_place(CprFile *cf, size_t envelope, bool backend_ok)
{
    uint64_t off = ROUND_UP(envelope, CPR_REBOOT_ALIGN);
    int i;

    for (i = 0; i < cf->nr_ram; i++) {
        CprRamEntry *e = &cf->ram[i];

        if (backend_ok &&
            cpr_reboot_ram_in_backend(qemu_ram_block_by_name(e->idstr))) {
            e->in_backend = true;
            continue;
        }
        e->file_offset = off;
        off = ROUND_UP(off + e->used_length, CPR_REBOOT_ALIGN);
    }
    cf->file_size = off;
}

static void cpr_reboot_layout(CprFile *cf, size_t envelope)
{
    cpr_reboot_place(cf, envelope, true);
}

void cpr_reboot_layout_copy(CprFile *cf, size_t envelope)
{
    cpr_reboot_place(cf, envelope, false);
}

static bool cpr_reboot_aligned(const void *p, uint64_t len, uint64_t off)
{
    return !(((uintptr_t)p | len | off) & (CPR_REBOOT_PAGE - 1));
}

static int cpr_reboot_pwrite(CprRebootJob *j, const uint8_t *p, uint64_t len,
                             uint64_t off)
{
    int fd = j->direct_fd >= 0 && cpr_reboot_aligned(p, len, off) ?
             j->direct_fd : j->fd;

    while (len) {
        ssize_t n = pwrite(fd, p, len, off);

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return n ? -errno : -ENOSPC;
        }
        p += n;
        len -= n;
        off += n;
        qatomic_add(&j->bytes, n);
    }
    return 0;
}

/* Whether the page at @p of @c's block stays out of the file */
static bool cpr_reboot_page_out(CprRebootChunk *c, uint64_t p, uint64_t end)
{
    return (c->skip && test_bit(p / CPR_REBOOT_PAGE, c->skip)) ||
           buffer_is_zero(c->rb->host + p, MIN(CPR_REBOOT_PAGE, end - p));
}

/* Write the pages that are not zero from @start to @end of @c's block */
static int cpr_reboot_write_pages(CprRebootJob *j, CprRebootChunk *c,
                                  uint64_t start, uint64_t end)
{
    const uint8_t *host = c->rb->host;
    uint64_t p = start, q;
    int ret;

    while (p < end) {
        while (p < end && cpr_reboot_page_out(c, p, end)) {
            p += CPR_REBOOT_PAGE;
        }
        for (q = p; q < end && q - p < CPR_REBOOT_MAX_IO &&
             !cpr_reboot_page_out(c, q, end);
             q += CPR_REBOOT_PAGE) {
            /* this page goes into the write */
        }
        q = MIN(q, end);
        if (q > p) {
            ret = cpr_reboot_pwrite(j, host + p, q - p, c->file_offset + p);
            if (ret < 0) {
                return ret;
            }
        }
        p = q;
    }
    return 0;
}

static int cpr_reboot_write_chunk(CprRebootJob *j, CprRebootChunk *c)
{
    int fd = c->rb->fd;
    off_t data, hole;
    int ret;

    /* A private mapping's own pages are not in the file */
    if (fd < 0 || !qemu_ram_is_shared(c->rb)) {
        return cpr_reboot_write_pages(j, c, c->start, c->end);
    }
    /* Memory in a file: the holes of the file are zero, never read them */
    for (data = c->start; data < c->end; data = hole) {
        data = lseek(fd, data, SEEK_DATA);
        if (data < 0 || data >= c->end) {
            break;
        }
        hole = lseek(fd, data, SEEK_HOLE);
        if (hole < 0 || hole > c->end) {
            hole = c->end;
        }
        ret = cpr_reboot_write_pages(j, c, data, hole);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

int cpr_reboot_write_range(int fd, int direct_fd, RAMBlock *rb,
                           uint64_t start, uint64_t end, uint64_t file_offset,
                           const unsigned long *skip, uint64_t *bytes)
{
    CprRebootJob j = { .fd = fd, .direct_fd = direct_fd };
    CprRebootChunk c = {
        .rb = rb, .start = start, .end = end, .file_offset = file_offset,
        .skip = skip,
    };
    int ret = cpr_reboot_write_chunk(&j, &c);

    *bytes += j.bytes;
    return ret;
}

static int cpr_reboot_read_chunk(CprRebootJob *j, CprRebootChunk *c)
{
    uint8_t *host = c->rb->host;
    off_t start = c->file_offset + c->start, end = c->file_offset + c->end;
    off_t data, hole;

    for (data = start; data < end; data = hole) {
        data = lseek(j->fd, data, SEEK_DATA);
        if (data < 0) {
            return errno == ENXIO ? 0 : -errno;
        }
        if (data >= end) {
            break;
        }
        hole = lseek(j->fd, data, SEEK_HOLE);
        hole = hole < 0 ? end : MIN(hole, end);
        while (data < hole) {
            uint8_t *p = host + (data - c->file_offset);
            size_t len = MIN(hole - data, CPR_REBOOT_MAX_IO);
            int fd = j->direct_fd >= 0 && cpr_reboot_aligned(p, len, data) ?
                     j->direct_fd : j->fd;
            ssize_t n = pread(fd, p, len, data);

            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n <= 0) {
                return n ? -errno : -EIO;
            }
            data += n;
            qatomic_add(&j->bytes, n);
        }
    }
    return 0;
}

static void *cpr_reboot_worker(void *opaque)
{
    CprRebootJob *j = opaque;
    int i, ret;

    while ((i = qatomic_fetch_inc(&j->next)) < j->chunks->len &&
           !qatomic_read(&j->error)) {
        ret = j->fn(j, &g_array_index(j->chunks, CprRebootChunk, i));
        if (ret < 0) {
            qatomic_cmpxchg(&j->error, 0, -ret);
        }
    }
    return NULL;
}

/* Run @j->fn over every chunk on a few threads; 0 or -errno */
static int cpr_reboot_run(CprRebootJob *j)
{
    QemuThread threads[CPR_REBOOT_THREADS - 1];
    int i, n = MIN(CPR_REBOOT_THREADS, j->chunks->len);

    for (i = 0; i < n - 1; i++) {
        qemu_thread_create(&threads[i], "cpr-reboot-io", cpr_reboot_worker,
                           j, QEMU_THREAD_JOINABLE);
    }
    cpr_reboot_worker(j);
    for (i = 0; i < n - 1; i++) {
        qemu_thread_join(&threads[i]);
    }
    return -j->error;
}

static void cpr_reboot_add_chunks(GArray *chunks, RAMBlock *rb,
                                  uint64_t len, uint64_t file_offset)
{
    uint64_t off;

    for (off = 0; off < len; off += CPR_REBOOT_CHUNK) {
        CprRebootChunk c = {
            .rb = rb, .start = off, .end = MIN(len, off + CPR_REBOOT_CHUNK),
            .file_offset = file_offset,
        };

        g_array_append_val(chunks, c);
    }
}

static bool cpr_reboot_write(CprFile *cf, const char *tmp, int fd,
                             Error **errp)
{
    g_autoptr(GArray) chunks = g_array_new(false, false,
                                           sizeof(CprRebootChunk));
    CprRebootJob j = { .chunks = chunks, .fn = cpr_reboot_write_chunk,
                       .fd = fd };
    int64_t t = get_clock();
    int i, ret;

    for (i = 0; i < cf->nr_ram; i++) {
        CprRamEntry *e = &cf->ram[i];
        RAMBlock *rb = qemu_ram_block_by_name(e->idstr);

        if (e->in_backend) {
            /* Its file is the copy: make it durable */
            qemu_ram_msync(rb, 0, rb->used_length);
            if (fsync(rb->fd) < 0) {
                error_setg_errno(errp, errno, "cannot sync the backend file "
                                 "of RAM block '%s'", rb->idstr);
                return false;
            }
            continue;
        }
        cpr_reboot_add_chunks(chunks, rb, e->used_length, e->file_offset);
    }
    if (ftruncate(fd, cf->file_size) < 0) {
        error_setg_errno(errp, errno, "cannot size it");
        return false;
    }
    j.direct_fd = open(tmp, O_WRONLY | O_DIRECT | O_CLOEXEC);
    ret = cpr_reboot_run(&j);
    if (j.direct_fd >= 0) {
        close(j.direct_fd);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "cannot write guest RAM");
        return false;
    }
    trace_cpr_reboot_write(j.bytes, cf->file_size, get_clock() - t,
                           j.direct_fd >= 0);
    return true;
}

static const CprFileOps cpr_reboot_file_ops = {
    .layout = cpr_reboot_layout,
    .write = cpr_reboot_write,
    .durable = true,
};


/* Clear what an earlier load, or the machine's reset, wrote into @rb */
static void cpr_reboot_clear(RAMBlock *rb)
{
    if (ram_block_discard_range(rb, 0, rb->max_length) < 0) {
        memset(rb->host, 0, rb->used_length);
    }
}

static bool cpr_reboot_load_ram(CprFile *cf, Error **errp)
{
    g_autoptr(GArray) chunks = g_array_new(false, false,
                                           sizeof(CprRebootChunk));
    CprRebootJob j = { .chunks = chunks, .fn = cpr_reboot_read_chunk };
    int64_t t = get_clock();
    int i, ret;

    for (i = 0; i < cf->nr_ram; i++) {
        CprRamEntry *e = &cf->ram[i];
        RAMBlock *rb = qemu_ram_block_by_name(e->idstr);

        if (e->in_backend) {
            if (!cpr_reboot_ram_in_backend(rb)) {
                error_setg(errp, "RAM block '%s' was saved in its backend "
                           "file, but here it is not in a shared file on a "
                           "disk file system; start QEMU with the same "
                           "memory-backend-file", e->idstr);
                return false;
            }
            continue;
        }
        if (!e->file_offset || e->file_offset + e->used_length >
            cf->file_size) {
            error_setg(errp, "'%s' is corrupt: RAM block '%s' is not in it",
                       cf->path, e->idstr);
            return false;
        }
    }

    j.fd = open(cf->path, O_RDONLY | O_CLOEXEC);
    if (j.fd < 0) {
        error_setg_errno(errp, errno, "cannot read CPR state file '%s'",
                         cf->path);
        return false;
    }
    for (i = 0; i < cf->nr_ram; i++) {
        CprRamEntry *e = &cf->ram[i];
        RAMBlock *rb = qemu_ram_block_by_name(e->idstr);

        if (e->in_backend) {
            continue;
        }
        /* Fresh RAM is zero, but ROMs are filled at reset */
        if (cpr_reboot_ram_loaded || memory_region_is_rom(rb->mr) ||
            memory_region_is_romd(rb->mr)) {
            cpr_reboot_clear(rb);
        }
        cpr_reboot_add_chunks(chunks, rb, e->used_length, e->file_offset);
    }
    cpr_reboot_ram_loaded = true;
    j.direct_fd = open(cf->path, O_RDONLY | O_DIRECT | O_CLOEXEC);
    ret = cpr_reboot_run(&j);
    if (j.direct_fd >= 0) {
        close(j.direct_fd);
    }
    close(j.fd);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "cannot read guest RAM from '%s'",
                         cf->path);
        return false;
    }
    trace_cpr_reboot_load(j.bytes, cf->file_size, get_clock() - t,
                          j.direct_fd >= 0);
    return true;
}

/* A fresh QEMU started with -incoming defer, nothing migrated into it */
static bool cpr_reboot_load_pending(void)
{
    return runstate_check(RUN_STATE_INMIGRATE) &&
           migration_incoming_get_current()->state == MIGRATION_STATUS_NONE;
}

const CprModeOps cpr_reboot_ops = {
    .mode = CPR_MODE_REBOOT,
    .stop_state = RUN_STATE_PAUSED,
    .file = &cpr_reboot_file_ops,
    /* no finish: the VM stays paused; quit, or cont to change one's mind */
    .load_pending = cpr_reboot_load_pending,
    .load_ram = cpr_reboot_load_ram,
    .other_mode_hint = ", which only the process that cprsave started can "
                       "load",
};
