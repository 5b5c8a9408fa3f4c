/*
 * What the libFuzzer targets of CPR share
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/memfd.h"
#include "cpr_fuzz.h"

/*
 * A GLib critical made fatal (G_DEBUG=fatal-criticals) stops at a
 * breakpoint, SIGTRAP, which libFuzzer does not catch: abort instead, so
 * that it saves the input that did it
 */
static void cpr_fuzz_trap(int sig)
{
    abort();
}

void cpr_fuzz_pre(void)
{
    struct sigaction sa = { .sa_handler = cpr_fuzz_trap };
    sigset_t set;

    sigemptyset(&set);
    sigaddset(&set, SIGALRM);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    sigaction(SIGTRAP, &sa, NULL);
}

int cpr_fuzz_memfd(const void *data, size_t len)
{
    int fd = memfd_create("cpr-fuzz", MFD_CLOEXEC);

    g_assert(fd >= 0);
    g_assert(write(fd, data, len) == len);
    return fd;
}

void cpr_fuzz_write_seed(const char *name, const void *data, size_t len)
{
    const char *dir = getenv("CPR_FUZZ_SEEDS");
    g_autofree char *path = NULL;
    g_autoptr(GError) err = NULL;

    if (!dir) {
        return;
    }
    path = g_build_filename(dir, name, NULL);
    if (!g_file_set_contents(path, data, len, &err)) {
        fprintf(stderr, "cannot write seed %s: %s\n", path, err->message);
        exit(1);
    }
}

void cpr_fuzz_open_fds(GArray *fds, unsigned n)
{
    while (n--) {
        int fd = open("/dev/null", O_RDWR | O_CLOEXEC);

        g_assert(fd >= 0);
        g_array_append_val(fds, fd);
    }
}

void cpr_fuzz_close_fds(GArray *fds)
{
    guint i;

    for (i = 0; i < fds->len; i++) {
        close(g_array_index(fds, int, i));
    }
    g_array_set_size(fds, 0);
}
