/*
 * libFuzzer target: CPR state files
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * An input is a state file as cprload reads it: cpr_file_read() takes it
 * from a memfd, through its /proc/self/fd path; what it accepts goes on
 * to the check of its RAM blocks against this machine and to the load of
 * its device state into this machine's devices, as cprload does.
 *
 * Mutations seldom keep a checksum right, so unless bit 0 of the input's
 * first byte is set, the harness writes the envelope's length and CRC-32
 * into the rest of the input (the file) before it is read; with bit 0 set
 * the file is read as it is.
 *
 * Seeds (CPR_FUZZ_SEEDS, cpr_fuzz.h): state files this machine saves.
 */

#include "qemu/osdep.h"
#include <zlib.h>
#include "qapi/error.h"
#include "qemu/bswap.h"
#include "sysemu/runstate.h"
#include "migration/cpr-internal.h"
#include "fuzz.h"
#include "cpr_fuzz.h"

static GString *cpr_file_fuzz_cmdline(FuzzTarget *t)
{
    return g_string_new(CPR_FUZZ_MACHINE);
}

/* Seeds: the state file of each mode, as this machine saves it */
static void cpr_file_fuzz_seeds(void)
{
    CprMode mode;

    for (mode = 0; mode < CPR_MODE__MAX; mode++) {
        g_autoptr(GByteArray) b = cpr_file_save(mode, &error_abort);
        g_autofree char *name = g_strdup_printf("%s.cprf",
                                                CprMode_str(mode));

        g_byte_array_prepend(b, (const uint8_t *)"", 1);
        cpr_fuzz_write_seed(name, b->data, b->len);
    }
}

static void cpr_file_fuzz_pre(QTestState *s)
{
    cpr_fuzz_pre();
    vm_stop(RUN_STATE_PAUSED);
    cpr_file_fuzz_seeds();
}

/* Make @b's envelope the whole of it, with the right CRC */
static void cpr_file_fuzz_fix(GByteArray *b)
{
    uint32_t crc;

    if (b->len < CPR_FILE_PREFIX + 4) {
        return;
    }
    stq_be_p(b->data + 16, b->len);
    crc = crc32(0, b->data, b->len - 4);
    stl_be_p(b->data + b->len - 4, crc);
}

static void cpr_file_fuzz(QTestState *s, const unsigned char *data,
                          size_t size)
{
    g_autoptr(GByteArray) b = NULL;
    g_autoptr(CprFile) cf = NULL;
    g_autofree char *path = NULL;
    Error *err = NULL;
    int fd;

    if (!size) {
        return;
    }
    b = g_byte_array_new_take(g_memdup2(data + 1, size - 1), size - 1);
    if (!(data[0] & 1)) {
        cpr_file_fuzz_fix(b);
    }
    fd = cpr_fuzz_memfd(b->data, b->len);
    path = g_strdup_printf("/proc/self/fd/%d", fd);
    cf = cpr_file_read(path, &err);
    close(fd);
    if (cf && cpr_ram_check(cf, false, &err)) {
        cpr_load_devices_prepare();
        cpr_file_load_devices(cf, &err);
    }
    error_free(err);
}

static void cpr_file_fuzz_register(void)
{
    fuzz_add_target(&(FuzzTarget) {
        .name = "cpr-file",
        .description = "CPR state files: envelope, header, device state",
        .get_init_cmdline = cpr_file_fuzz_cmdline,
        .pre_fuzz = cpr_file_fuzz_pre,
        .fuzz = cpr_file_fuzz,
    });
}

fuzz_target_init(cpr_file_fuzz_register);
