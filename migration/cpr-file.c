/*
 * CPR: the state file
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A state file holds what cprload needs besides the kept descriptors:
 * the machine type, the RAM blocks and their sizes, and the device and
 * CPU state written by qemu_save_device_state().  All integers are
 * big-endian:
 *
 *   "QEMUCPRF"  be32 version  be32 mode  be16 len  machine type
 *   be32 count  count x { be16 len  RAM block id  be64 used  be64 size }
 *   be64 length of the device state   device state
 *   be32 CRC-32 of everything before it
 *
 * A file is read whole and checked (magic, version, length, checksum)
 * before anything in the VM changes.  The file is created with mode 0600
 * under a temporary name and renamed into place once complete.
 */

#include "qemu/osdep.h"
#include <zlib.h>
#include "qemu/bswap.h"
#include "qemu/timer.h"
#include "qemu/units.h"
#include "qapi/error.h"
#include "io/channel-buffer.h"
#include "hw/boards.h"
#include "sysemu/cpus.h"
#include "migration/cpr.h"
#include "migration/qemu-file.h"
#include "migration/savevm.h"
#include "migration/migration.h"
#include "cpr-internal.h"
#include "trace.h"

#define CPR_FILE_MAGIC "QEMUCPRF"
#define CPR_FILE_VERSION 1

static void put_be16(GByteArray *b, uint16_t v)
{
    v = cpu_to_be16(v);
    g_byte_array_append(b, (guint8 *)&v, sizeof(v));
}

static void put_be32(GByteArray *b, uint32_t v)
{
    v = cpu_to_be32(v);
    g_byte_array_append(b, (guint8 *)&v, sizeof(v));
}

static void put_be64(GByteArray *b, uint64_t v)
{
    v = cpu_to_be64(v);
    g_byte_array_append(b, (guint8 *)&v, sizeof(v));
}

static void put_string(GByteArray *b, const char *s)
{
    size_t len = strlen(s);

    assert(len <= UINT16_MAX);
    put_be16(b, len);
    g_byte_array_append(b, (const guint8 *)s, len);
}

/* The device and CPU state stream, with its length before it, into @b */
static bool cpr_file_save_devices(GByteArray *b, Error **errp)
{
    g_autoptr(GByteArray) devices = g_byte_array_new();

    if (!cpr_save_devices(devices, errp)) {
        return false;
    }
    put_be64(b, devices->len);
    g_byte_array_append(b, devices->data, devices->len);
    return true;
}

bool cpr_save_devices(GByteArray *b, Error **errp)
{
    QIOChannelBuffer *bioc = qio_channel_buffer_new(256 * KiB);
    QEMUFile *f = qemu_file_new_output(QIO_CHANNEL(bioc));
    int ret;

    ret = qemu_save_device_state(f);
    qemu_fflush(f);
    if (!ret) {
        ret = qemu_file_get_error(f);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "cannot save device state");
    } else {
        g_byte_array_append(b, bioc->data, bioc->usage);
    }
    qemu_fclose(f);
    object_unref(OBJECT(bioc));
    return ret >= 0;
}

static bool cpr_write_all(int fd, const uint8_t *p, size_t len)
{
    while (len) {
        ssize_t n = write(fd, p, len);

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return false;
        }
        p += n;
        len -= n;
    }
    return true;
}

bool cpr_file_write(const char *path, CprMode mode, Error **errp)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    g_autofree char *tmp = g_strdup_printf("%s.XXXXXX", path);
    GArray *ram;
    guint i;
    int fd;

    g_byte_array_append(b, (const guint8 *)CPR_FILE_MAGIC, 8);
    put_be32(b, CPR_FILE_VERSION);
    put_be32(b, mode);
    put_string(b, MACHINE_GET_CLASS(current_machine)->name);
    ram = cpr_ram_table();
    put_be32(b, ram->len);
    for (i = 0; i < ram->len; i++) {
        CprRamEntry *e = &g_array_index(ram, CprRamEntry, i);

        put_string(b, e->idstr);
        put_be64(b, e->used_length);
        put_be64(b, e->max_length);
    }
    cpr_ram_table_free(ram);
    if (!cpr_file_save_devices(b, errp)) {
        return false;
    }
    put_be32(b, crc32(0, b->data, b->len));

    fd = g_mkstemp_full(tmp, O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0) {
        error_setg_errno(errp, errno, "cannot create '%s'", tmp);
        return false;
    }
    if (!cpr_write_all(fd, b->data, b->len)) {
        error_setg_errno(errp, errno ?: ENOSPC, "cannot write '%s'", path);
        goto fail;
    }
    if (close(fd) < 0) {
        fd = -1;
        error_setg_errno(errp, errno, "cannot write '%s'", path);
        goto fail;
    }
    fd = -1;
    if (rename(tmp, path) < 0) {
        error_setg_errno(errp, errno, "cannot rename '%s' to '%s'", tmp, path);
        goto fail;
    }
    trace_cpr_file_write(path, b->len);
    return true;

fail:
    if (fd >= 0) {
        close(fd);
    }
    unlink(tmp);
    return false;
}

void cpr_file_free(CprFile *cf)
{
    if (cf) {
        g_free(cf->machine);
        cpr_ram_table_free(cf->ram);
        g_free(cf->data);
        g_free(cf);
    }
}

/* Bounds-checked reader over the file contents */
typedef struct CprReader {
    const uint8_t *p;
    const uint8_t *end;
    bool short_read;
} CprReader;

static const uint8_t *take(CprReader *r, size_t n)
{
    const uint8_t *p = r->p;

    if ((size_t)(r->end - r->p) < n) {
        r->short_read = true;
        r->p = r->end;
        return NULL;
    }
    r->p += n;
    return p;
}

static uint16_t get_be16(CprReader *r)
{
    const uint8_t *p = take(r, 2);

    return p ? lduw_be_p(p) : 0;
}

static uint32_t get_be32(CprReader *r)
{
    const uint8_t *p = take(r, 4);

    return p ? ldl_be_p(p) : 0;
}

static uint64_t get_be64(CprReader *r)
{
    const uint8_t *p = take(r, 8);

    return p ? ldq_be_p(p) : 0;
}

static char *get_string(CprReader *r)
{
    uint16_t len = get_be16(r);
    const uint8_t *p = take(r, len);

    return p ? g_strndup((const char *)p, len) : NULL;
}

CprFile *cpr_file_read(const char *path, Error **errp)
{
    g_autoptr(CprFile) cf = g_new0(CprFile, 1);
    g_autoptr(GError) gerr = NULL;
    CprReader r;
    gsize size;
    uint32_t version, count, i, crc;
    uint64_t devices_len;
    size_t need;

    if (!g_file_get_contents(path, (gchar **)&cf->data, &size, &gerr)) {
        error_setg(errp, "cannot read CPR state file: %s", gerr->message);
        return NULL;
    }
    r = (CprReader) { cf->data, cf->data + size, false };
    if (size < 12 || memcmp(take(&r, 8), CPR_FILE_MAGIC, 8)) {
        error_setg(errp, "'%s' is not a CPR state file", path);
        return NULL;
    }
    version = get_be32(&r);
    if (version != CPR_FILE_VERSION) {
        error_setg(errp, "'%s' has CPR state version %u; this QEMU reads "
                   "version %u", path, version, CPR_FILE_VERSION);
        return NULL;
    }
    cf->mode = get_be32(&r);
    cf->machine = get_string(&r);
    count = get_be32(&r);
    cf->ram = cpr_ram_table_new();
    for (i = 0; i < count && !r.short_read; i++) {
        CprRamEntry e;

        e.idstr = get_string(&r);
        e.used_length = get_be64(&r);
        e.max_length = get_be64(&r);
        if (!e.idstr) {
            break;
        }
        g_array_append_val(cf->ram, e);
    }
    devices_len = get_be64(&r);
    if (r.short_read) {
        error_setg(errp, "'%s' is truncated: it ends inside its header",
                   path);
        return NULL;
    }
    cf->devices_offset = r.p - cf->data;
    need = cf->devices_offset + devices_len + 4;
    if (devices_len > size || need > size) {
        error_setg(errp, "'%s' is truncated: %zu bytes, expected %zu",
                   path, (size_t)size, need);
        return NULL;
    }
    if (need < size) {
        error_setg(errp, "'%s' is corrupt: %zu bytes after its end",
                   path, (size_t)size - need);
        return NULL;
    }
    cf->devices_len = devices_len;
    crc = ldl_be_p(cf->data + size - 4);
    if (crc != crc32(0, cf->data, size - 4)) {
        error_setg(errp, "'%s' is corrupt: checksum mismatch", path);
        return NULL;
    }
    if (cf->mode >= CPR_MODE__MAX) {
        error_setg(errp, "'%s' has unknown CPR mode %u", path, cf->mode);
        return NULL;
    }
    trace_cpr_file_read(path, size, cf->machine);
    return g_steal_pointer(&cf);
}

bool cpr_file_load_devices(CprFile *cf, Error **errp)
{
    return cpr_load_devices(cf->data + cf->devices_offset, cf->devices_len,
                            NULL, errp);
}

bool cpr_load_devices(const uint8_t *data, size_t len, int64_t *cpu_ns,
                      Error **errp)
{
    int64_t t;
    QIOChannelBuffer *bioc = qio_channel_buffer_new(len);
    QEMUFile *f;
    int ret;

    memcpy(bioc->data, data, len);
    bioc->usage = len;
    f = qemu_file_new_input(QIO_CHANNEL(bioc));

    if (qemu_get_be32(f) != QEMU_VM_FILE_MAGIC ||
        qemu_get_be32(f) != QEMU_VM_FILE_VERSION) {
        error_setg(errp, "the device state has no valid header");
        ret = -EINVAL;
        goto out;
    }
    cpu_synchronize_all_pre_loadvm();
    /* As qemu_load_device_state(), timing the CPUs' own part */
    ret = qemu_loadvm_state_main(f, migration_incoming_get_current());
    if (ret < 0) {
        error_setg(errp, "cannot load device state (%s); see the error log "
                   "for the device that refused it", strerror(-ret));
        goto out;
    }
    t = get_clock();
    cpu_synchronize_all_post_init();
    if (cpu_ns) {
        *cpu_ns = get_clock() - t;
    }
out:
    qemu_fclose(f);
    object_unref(OBJECT(bioc));
    return ret >= 0;
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
