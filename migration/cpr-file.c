/*
 * CPR: the state file
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A state file holds what cprload needs besides the kept descriptors.
 * Its envelope (integers big-endian):
 *
 *   "QEMUCPRF"  be32 version  be32 mode  be64 envelope length  be32 H
 *   H bytes: the header, vmstate "cpr-file" (machine type, RAM blocks)
 *   the device and CPU state written by qemu_save_device_state()
 *   be32 CRC-32 of the envelope before it
 *
 * In reboot mode the pages of guest RAM follow the envelope, each RAM
 * block at the file offset its header entry gives; pages that are zero
 * are holes, and the file ends where the last block ends.
 *
 * The envelope is read whole and checked (magic, version, length,
 * checksum, file size) before anything in the VM changes.  A file is
 * created with mode 0600 under a temporary name, made durable when the
 * mode asks for it, and renamed into place once complete.
 */

#include "qemu/osdep.h"
#include <zlib.h>
#include "qemu/bswap.h"
#include "qemu/units.h"
#include "qapi/error.h"
#include "hw/boards.h"
#include "migration/cpr.h"
#include "migration/vmstate.h"
#include "cpr-internal.h"
#include "trace.h"

#define CPR_FILE_MAGIC "QEMUCPRF"
#define CPR_FILE_VERSION 2
/* Larger than any device state: a bad length is refused, not allocated */
#define CPR_FILE_MAX_ENVELOPE (1 * GiB)

/* Bounds checked before a length or count sizes an allocation */
#define CPR_FILE_MAX_NAME       256     /* RAM block ids, machine types */
#define CPR_FILE_MAX_RAM        4096

/*
 * The RAM entries a load of a header has begun: vmstate does not zero
 * the array it allocates, so only these may be freed after a failed load
 */
static int cpr_ram_entries_begun;

/* An element of the array vmstate allocates: start from zero */
static int cpr_ram_entry_pre_load(void *opaque)
{
    memset(opaque, 0, sizeof(CprRamEntry));
    cpr_ram_entries_begun++;
    return 0;
}

static bool cpr_ram_entry_idstr_len_ok(void *opaque, int version_id)
{
    return ((CprRamEntry *)opaque)->idstr_len <= CPR_FILE_MAX_NAME;
}

static int cpr_ram_entry_post_load(void *opaque, int version_id)
{
    CprRamEntry *e = opaque;

    return cpr_vmstate_string_ok(e->idstr, e->idstr_len) ? 0 : -EINVAL;
}

static bool cpr_ram_entry_in_file(void *opaque)
{
    CprRamEntry *e = opaque;

    return e->file_offset || e->in_backend;
}

/* Reboot mode: where the block's pages are */
static const VMStateDescription vmstate_cpr_ram_entry_file = {
    .name = "cpr-ram-block/file",
    .version_id = 1,
    .minimum_version_id = 1,
    .needed = cpr_ram_entry_in_file,
    .fields = (VMStateField[]) {
        VMSTATE_UINT64(file_offset, CprRamEntry),
        VMSTATE_BOOL(in_backend, CprRamEntry),
        VMSTATE_END_OF_LIST()
    },
};

static bool cpr_ram_entry_is_own(void *opaque)
{
    return ((CprRamEntry *)opaque)->own;
}

/* Fork: a block the parent keeps to itself, each child has its own */
static const VMStateDescription vmstate_cpr_ram_entry_own = {
    .name = "cpr-ram-block/own",
    .version_id = 1,
    .minimum_version_id = 1,
    .needed = cpr_ram_entry_is_own,
    .fields = (VMStateField[]) {
        VMSTATE_BOOL(own, CprRamEntry),
        VMSTATE_END_OF_LIST()
    },
};

static const VMStateDescription *vmstate_cpr_ram_entry_subsections[] = {
    &vmstate_cpr_ram_entry_file,
    &vmstate_cpr_ram_entry_own,
    NULL
};

static const VMStateDescription vmstate_cpr_ram_entry = {
    .name = "cpr-ram-block",
    .version_id = 1,
    .minimum_version_id = 1,
    .pre_load = cpr_ram_entry_pre_load,
    .post_load = cpr_ram_entry_post_load,
    .fields = (VMStateField[]) {
        VMSTATE_UINT32(idstr_len, CprRamEntry),
        VMSTATE_VALIDATE("idstr_len", cpr_ram_entry_idstr_len_ok),
        VMSTATE_VBUFFER_ALLOC_UINT32(idstr, CprRamEntry, 0, NULL, idstr_len),
        VMSTATE_UINT64(used_length, CprRamEntry),
        VMSTATE_UINT64(max_length, CprRamEntry),
        VMSTATE_END_OF_LIST()
    },
    .subsections = vmstate_cpr_ram_entry_subsections,
};

static int cpr_file_header_pre_load(void *opaque)
{
    CprFile *cf = opaque;

    /* The fields are loaded over what the file had */
    g_clear_pointer(&cf->machine, g_free);
    cpr_ram_entries_begun = 0;
    return 0;
}

static int cpr_file_header_post_load(void *opaque, int version_id)
{
    CprFile *cf = opaque;

    return cpr_vmstate_string_ok(cf->machine, cf->machine_len) ? 0 : -EINVAL;
}

static bool cpr_file_machine_len_ok(void *opaque, int version_id)
{
    return ((CprFile *)opaque)->machine_len <= CPR_FILE_MAX_NAME;
}

static bool cpr_file_nr_ram_ok(void *opaque, int version_id)
{
    CprFile *cf = opaque;

    return cf->nr_ram >= 0 && cf->nr_ram <= CPR_FILE_MAX_RAM;
}

static bool cpr_file_has_ram(void *opaque)
{
    CprFile *cf = opaque;

    return cf->file_size != 0;
}

/* Reboot mode: the size of the file with the pages of guest RAM */
static const VMStateDescription vmstate_cpr_file_ram = {
    .name = "cpr-file/ram",
    .version_id = 1,
    .minimum_version_id = 1,
    .needed = cpr_file_has_ram,
    .fields = (VMStateField[]) {
        VMSTATE_UINT64(file_size, CprFile),
        VMSTATE_END_OF_LIST()
    },
};

static const VMStateDescription *vmstate_cpr_file_subsections[] = {
    &vmstate_cpr_file_ram,
    NULL
};

static const VMStateDescription vmstate_cpr_file = {
    .name = "cpr-file",
    .version_id = 1,
    .minimum_version_id = 1,
    .pre_load = cpr_file_header_pre_load,
    .post_load = cpr_file_header_post_load,
    .fields = (VMStateField[]) {
        VMSTATE_UINT32(machine_len, CprFile),
        VMSTATE_VALIDATE("machine_len", cpr_file_machine_len_ok),
        VMSTATE_VBUFFER_ALLOC_UINT32(machine, CprFile, 0, NULL, machine_len),
        VMSTATE_INT32(nr_ram, CprFile),
        VMSTATE_VALIDATE("nr_ram", cpr_file_nr_ram_ok),
        VMSTATE_STRUCT_VARRAY_ALLOC(ram, CprFile, nr_ram, 0,
                                    vmstate_cpr_ram_entry, CprRamEntry),
        VMSTATE_END_OF_LIST()
    },
    .subsections = vmstate_cpr_file_subsections,
};

void cpr_file_free(CprFile *cf)
{
    int i;

    if (cf) {
        for (i = 0; cf->ram && i < cf->nr_ram; i++) {
            g_free(cf->ram[i].idstr);
        }
        g_free(cf->ram);
        g_free(cf->machine);
        g_free(cf->data);
        g_free(cf->path);
        g_free(cf);
    }
}

CprFile *cpr_file_new(CprMode mode)
{
    CprFile *cf = g_new0(CprFile, 1);

    cf->mode = mode;
    cf->machine = g_strdup(MACHINE_GET_CLASS(current_machine)->name);
    cf->machine_len = strlen(cf->machine) + 1;
    cpr_ram_describe(cf);
    return cf;
}

/* The header as vmstate, appended to @b */
static void cpr_file_put_header(CprFile *cf, GByteArray *b)
{
    cpr_vmstate_save(&vmstate_cpr_file, cf, b);
}

size_t cpr_file_envelope_size(CprFile *cf, size_t devices_len)
{
    g_autoptr(GByteArray) h = g_byte_array_new();

    cpr_file_put_header(cf, h);
    return CPR_FILE_PREFIX + h->len + devices_len + 4;
}

GByteArray *cpr_file_envelope(CprFile *cf, GByteArray *devices)
{
    GByteArray *b = cpr_devices_buffer(devices->len + 4 * KiB);
    uint8_t prefix[CPR_FILE_PREFIX];
    uint32_t crc;

    memcpy(prefix, CPR_FILE_MAGIC, 8);
    stl_be_p(prefix + 8, CPR_FILE_VERSION);
    stl_be_p(prefix + 12, cf->mode);
    g_byte_array_append(b, prefix, sizeof(prefix));
    cpr_file_put_header(cf, b);
    stl_be_p(b->data + 24, b->len - CPR_FILE_PREFIX);
    g_byte_array_append(b, devices->data, devices->len);
    stq_be_p(b->data + 16, b->len + 4);
    crc = cpu_to_be32(crc32(0, b->data, b->len));
    g_byte_array_append(b, (guint8 *)&crc, 4);
    return b;
}

bool cpr_file_pwrite(int fd, const uint8_t *p, size_t len, off_t off)
{
    while (len) {
        ssize_t n = pwrite(fd, p, len, off);

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            if (!n) {
                errno = ENOSPC;
            }
            return false;
        }
        p += n;
        len -= n;
        off += n;
    }
    return true;
}

/* fsync the directory holding @path, so that a rename in it is durable */
static bool cpr_sync_dir(const char *path, Error **errp)
{
    g_autofree char *dir = g_path_get_dirname(path);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

    if (fd < 0 || fsync(fd) < 0) {
        error_setg_errno(errp, errno, "cannot make '%s' durable", path);
        if (fd >= 0) {
            close(fd);
        }
        return false;
    }
    close(fd);
    return true;
}

int cpr_file_create(const char *path, char **tmp, Error **errp)
{
    int fd;

    *tmp = g_strdup_printf("%s.XXXXXX", path);
    fd = g_mkstemp_full(*tmp, O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0) {
        error_setg_errno(errp, errno, "cannot create '%s'", *tmp);
        g_clear_pointer(tmp, g_free);
    }
    return fd;
}

bool cpr_file_commit(int fd, const char *tmp, const char *path, bool durable,
                     Error **errp)
{
    if (durable && fsync(fd) < 0) {
        error_setg_errno(errp, errno, "cannot write '%s'", path);
        close(fd);
        goto fail;
    }
    if (close(fd) < 0) {
        error_setg_errno(errp, errno, "cannot write '%s'", path);
        goto fail;
    }
    cpr_step("file-written");
    if (rename(tmp, path) < 0) {
        error_setg_errno(errp, errno, "cannot rename '%s' to '%s'", tmp, path);
        goto fail;
    }
    if (durable && !cpr_sync_dir(path, errp)) {
        unlink(path);
        return false;
    }
    return true;

fail:
    unlink(tmp);
    return false;
}

void cpr_file_discard(int fd, const char *tmp)
{
    close(fd);
    unlink(tmp);
}

bool cpr_file_write(const char *path, CprMode mode,
                    const CprFileOps *ops, Error **errp)
{
    ERRP_GUARD();
    g_autoptr(CprFile) cf = cpr_file_new(mode);
    g_autoptr(GByteArray) devices = cpr_save_devices(errp);
    g_autoptr(GByteArray) b = NULL;
    g_autofree char *tmp = NULL;
    int fd;

    if (!devices) {
        return false;
    }
    if (ops && ops->layout) {
        /* Placed once, the header has its offsets: the envelope's size */
        ops->layout(cf, cpr_file_envelope_size(cf, devices->len));
        ops->layout(cf, cpr_file_envelope_size(cf, devices->len));
    }
    b = cpr_file_envelope(cf, devices);

    fd = cpr_file_create(path, &tmp, errp);
    if (fd < 0) {
        return false;
    }
    if (!cpr_file_pwrite(fd, b->data, b->len, 0)) {
        error_setg_errno(errp, errno, "cannot write '%s'", path);
        cpr_file_discard(fd, tmp);
        return false;
    }
    if (ops && ops->write && !ops->write(cf, tmp, fd, errp)) {
        error_prepend(errp, "cannot write '%s': ", path);
        cpr_file_discard(fd, tmp);
        return false;
    }
    if (!cpr_file_commit(fd, tmp, path, ops && ops->durable, errp)) {
        return false;
    }
    trace_cpr_file_write(path, b->len, cf->file_size);
    return true;
}

static bool cpr_read_all(int fd, uint8_t *p, size_t len, off_t off)
{
    while (len) {
        ssize_t n = pread(fd, p, len, off);

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return false;
        }
        p += n;
        len -= n;
        off += n;
    }
    return true;
}

/* Parse the header at @cf->data, already checked against its CRC */
static bool cpr_file_parse_header(CprFile *cf, size_t hlen, Error **errp)
{
    if (!cpr_vmstate_load(&vmstate_cpr_file, cf, cf->data + CPR_FILE_PREFIX,
                          hlen)) {
        /* RAM entries a failed load did not reach are not initialised */
        cf->nr_ram = cf->ram ? cpr_ram_entries_begun : 0;
        error_setg(errp, "'%s' is corrupt: its header cannot be read",
                   cf->path);
        return false;
    }
    return true;
}

/*
 * Check the prefix of the state @name, @size bytes of which are at hand
 * (at least CPR_FILE_PREFIX of them at @prefix, or all): give the length
 * of its envelope and of its header
 */
static bool cpr_file_check_prefix(const char *name, const uint8_t *prefix,
                                  uint64_t size, uint64_t *len,
                                  uint32_t *hlen, Error **errp)
{
    uint32_t version;

    if (size < 8 || memcmp(prefix, CPR_FILE_MAGIC, 8)) {
        error_setg(errp, "'%s' is not a CPR state file", name);
        return false;
    }
    if (size < CPR_FILE_PREFIX + 4) {
        error_setg(errp, "'%s' is truncated: it ends inside its header",
                   name);
        return false;
    }
    version = ldl_be_p(prefix + 8);
    if (version != CPR_FILE_VERSION) {
        error_setg(errp, "'%s' has CPR state version %u; this QEMU reads "
                   "version %u", name, version, CPR_FILE_VERSION);
        return false;
    }
    *len = ldq_be_p(prefix + 16);
    *hlen = ldl_be_p(prefix + 24);
    if (*len > size) {
        error_setg(errp, "'%s' is truncated: %" PRIu64 " bytes, expected at "
                   "least %" PRIu64, name, size, *len);
        return false;
    }
    if (*len < CPR_FILE_PREFIX + 4 || *len > CPR_FILE_MAX_ENVELOPE ||
        *hlen > *len - CPR_FILE_PREFIX - 4) {
        error_setg(errp, "'%s' is corrupt: its lengths are impossible",
                   name);
        return false;
    }
    return true;
}

/* Check @cf's envelope, read whole into @cf->data, and parse its header */
static bool cpr_file_check_envelope(CprFile *cf, uint32_t hlen, Error **errp)
{
    /* ldl_be_p() gives an int: compare as the 32-bit CRC it is */
    if ((uint32_t)ldl_be_p(cf->data + cf->len - 4) !=
        (uint32_t)crc32(0, cf->data, cf->len - 4)) {
        error_setg(errp, "'%s' is corrupt: checksum mismatch", cf->path);
        return false;
    }
    cf->mode = ldl_be_p(cf->data + 12);
    if (cf->mode >= CPR_MODE__MAX) {
        error_setg(errp, "'%s' has unknown CPR mode %u", cf->path, cf->mode);
        return false;
    }
    if (!cpr_file_parse_header(cf, hlen, errp)) {
        return false;
    }
    cf->devices_offset = CPR_FILE_PREFIX + hlen;
    cf->devices_len = cf->len - 4 - cf->devices_offset;
    return true;
}

CprFile *cpr_file_read(const char *path, Error **errp)
{
    g_autoptr(CprFile) cf = g_new0(CprFile, 1);
    uint8_t prefix[CPR_FILE_PREFIX];
    uint32_t hlen;
    uint64_t len, end;
    struct stat st;
    int fd;

    cf->path = g_strdup(path);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) < 0) {
        error_setg_errno(errp, errno, "cannot read CPR state file '%s'",
                         path);
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        error_setg(errp, "cannot read CPR state file '%s': not a regular "
                   "file", path);
        goto fail;
    }
    if (!cpr_read_all(fd, prefix, MIN(st.st_size, CPR_FILE_PREFIX), 0)) {
        error_setg_errno(errp, errno ?: EIO, "cannot read CPR state file "
                         "'%s'", path);
        goto fail;
    }
    if (!cpr_file_check_prefix(path, prefix, st.st_size, &len, &hlen,
                               errp)) {
        goto fail;
    }
    cf->data = g_malloc(len);
    cf->len = len;
    if (!cpr_read_all(fd, cf->data, len, 0)) {
        error_setg_errno(errp, errno ?: EIO, "cannot read CPR state file '%s'",
                         path);
        goto fail;
    }
    close(fd);
    fd = -1;
    if (!cpr_file_check_envelope(cf, hlen, errp)) {
        return NULL;
    }
    /* What follows the envelope: the pages of guest RAM, or nothing */
    end = MAX(cf->file_size, len);
    if (st.st_size < end) {
        error_setg(errp, "'%s' is truncated: %" PRIu64 " bytes, expected "
                   "%" PRIu64, path, (uint64_t)st.st_size, end);
        return NULL;
    }
    if (st.st_size > end) {
        error_setg(errp, "'%s' is corrupt: %" PRIu64 " bytes after its end",
                   path, (uint64_t)st.st_size - end);
        return NULL;
    }
    trace_cpr_file_read(path, len, cf->machine);
    return g_steal_pointer(&cf);

fail:
    if (fd >= 0) {
        close(fd);
    }
    return NULL;
}

CprFile *cpr_file_parse(const char *name, GByteArray *b, Error **errp)
{
    g_autoptr(CprFile) cf = g_new0(CprFile, 1);
    uint32_t hlen;
    uint64_t len;

    cf->path = g_strdup(name);
    if (!cpr_file_check_prefix(name, b->data, b->len, &len, &hlen, errp)) {
        g_byte_array_unref(b);
        return NULL;
    }
    cf->len = b->len;
    cf->data = g_byte_array_free(b, false);
    if (!cpr_file_check_envelope(cf, hlen, errp)) {
        return NULL;
    }
    if (cf->len != len || cf->file_size > len) {
        error_setg(errp, "'%s' is corrupt: %zu bytes, its envelope is %"
                   PRIu64, name, cf->len, len);
        return NULL;
    }
    trace_cpr_file_read(name, len, cf->machine);
    return g_steal_pointer(&cf);
}

GByteArray *cpr_file_save(CprMode mode, Error **errp)
{
    g_autoptr(CprFile) cf = cpr_file_new(mode);
    g_autoptr(GByteArray) devices = cpr_save_devices(errp);

    return devices ? cpr_file_envelope(cf, devices) : NULL;
}

bool cpr_file_load_devices(CprFile *cf, Error **errp)
{
    return cpr_load_devices(cf->data + cf->devices_offset, cf->devices_len,
                            NULL, errp);
}
