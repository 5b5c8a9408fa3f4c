/*
 * What the libFuzzer targets of CPR share
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef CPR_FUZZ_H
#define CPR_FUZZ_H

/*
 * The machine of the parser targets: no device model, whose loader would
 * trust what it reads as upstream QEMU's do (a state file's device state
 * is covered by its CRC-32, not checked field by field); the machine of
 * cpr-trigger adds its device
 */
#define CPR_FUZZ_MACHINE \
    "qemu-system-x86_64 -machine none -m 16M -nodefaults -display none"
#define CPR_FUZZ_PC "qemu-system-x86_64 -machine q35 -m 16M -nodefaults " \
    "-display none"

/*
 * Before a target's first input: QEMU blocks SIGALRM in its main thread,
 * which libFuzzer's -timeout needs
 */
void cpr_fuzz_pre(void);

/* A memfd holding @len bytes of @data, read from its start */
int cpr_fuzz_memfd(const void *data, size_t len);

/*
 * With CPR_FUZZ_SEEDS=DIR, write @len bytes of @data as DIR/@name (a
 * seed of the corpus); nothing without it
 */
void cpr_fuzz_write_seed(const char *name, const void *data, size_t len);

/* Descriptors of /dev/null, @n of them, appended to @fds */
void cpr_fuzz_open_fds(GArray *fds, unsigned n);
void cpr_fuzz_close_fds(GArray *fds);

#endif
