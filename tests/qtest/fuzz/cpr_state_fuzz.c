/*
 * libFuzzer target: the CPR state a new process inherits
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * An input is the CPR state (the registry of kept descriptors and
 * strings) as cprsave restart leaves it in the memfd QEMU_CPR_STATE names,
 * and as transfer and fork send it, after a first byte: the number (modulo
 * 8) of descriptors sent with it.  The harness hands it over as a transfer
 * does, with that many descriptors of /dev/null in place of the sender's
 * (it cannot take descriptor numbers from an input: they would be the
 * fuzzer's own), then lets the fd sets take theirs and closes what nobody
 * claimed, as a new process does.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-misc.h"
#include "monitor/monitor.h"
#include "monitor/fdset-cpr.h"
#include "migration/cpr.h"
#include "migration/cpr-internal.h"
#include "fuzz.h"
#include "cpr_fuzz.h"

static GString *cpr_state_fuzz_cmdline(FuzzTarget *t)
{
    return g_string_new(CPR_FUZZ_MACHINE);
}

/*
 * Seeds: this process's registry with an fd set of two descriptors in
 * it, as -add-fd registers them; then three descriptors by name alone
 */
static void cpr_state_fuzz_seeds(void)
{
    static const char *const names[] = { "fdset:3", "fdset:3", "tap" };
    static const int ids[] = { 0, 1, 0 };
    g_autoptr(GArray) idv = g_array_new(false, false, sizeof(int));
    g_autoptr(GArray) fds = g_array_new(false, false, sizeof(int));
    g_autoptr(GByteArray) b = NULL;
    int i;

    cpr_fuzz_open_fds(fds, 2);
    for (i = 0; i < fds->len; i++) {
        cpr_save_fd("fdset:3", i, g_array_index(fds, int, i));
    }
    cpr_save_str("fdset:3:1", "opaque");
    cpr_save_str("fdsets", "3");
    b = cpr_state_serialize();
    for (i = 0; i < fds->len; i++) {
        cpr_delete_fd("fdset:3", i);
    }
    cpr_keep_str("fdset:3:1", NULL, false);
    cpr_keep_str("fdsets", NULL, false);
    cpr_fuzz_close_fds(fds);
    g_byte_array_prepend(b, (const uint8_t[]) { 2 }, 1);
    cpr_fuzz_write_seed("fdsets.cprs", b->data, b->len);
    g_byte_array_unref(b);

    for (i = 0; i < ARRAY_SIZE(ids); i++) {
        g_array_append_val(idv, ids[i]);
        g_array_append_val(fds, i);
    }
    b = cpr_state_serialize_fds((char **)names, idv, fds);
    g_byte_array_prepend(b, (const uint8_t[]) { ARRAY_SIZE(ids) }, 1);
    cpr_fuzz_write_seed("fds.cprs", b->data, b->len);
}

static void cpr_state_fuzz_pre(QTestState *s)
{
    cpr_fuzz_pre();
    cpr_state_fuzz_seeds();
}

static void cpr_state_fuzz_drop_fdset(int64_t set, int fd,
                                      const char *fd_opaque, void *opaque)
{
    GArray *sets = opaque;

    g_array_append_val(sets, set);
}

/* Remove the fd sets an input made */
static void cpr_state_fuzz_clean_fdsets(void)
{
    g_autoptr(GArray) sets = g_array_new(false, false, sizeof(int64_t));
    guint i;

    monitor_fdsets_foreach(cpr_state_fuzz_drop_fdset, sets);
    for (i = 0; i < sets->len; i++) {
        qmp_remove_fd(g_array_index(sets, int64_t, i), false, 0, NULL);
    }
}

static void cpr_state_fuzz(QTestState *s, const unsigned char *data,
                           size_t size)
{
    g_autoptr(GArray) fds = g_array_new(false, false, sizeof(int));
    Error *err = NULL;

    if (!size) {
        return;
    }
    cpr_fuzz_open_fds(fds, data[0] % 8);
    if (!cpr_state_receive(data + 1, size - 1, fds, true, &err)) {
        cpr_fuzz_close_fds(fds);
        error_free(err);
        return;
    }
    monitor_fdset_cpr_restore();
    cpr_state_incoming_done();
    cpr_state_fuzz_clean_fdsets();
}

static void cpr_state_fuzz_register(void)
{
    fuzz_add_target(&(FuzzTarget) {
        .name = "cpr-state",
        .description = "the CPR state inherited across execve or sent",
        .get_init_cmdline = cpr_state_fuzz_cmdline,
        .pre_fuzz = cpr_state_fuzz_pre,
        .fuzz = cpr_state_fuzz,
    });
}

fuzz_target_init(cpr_state_fuzz_register);
