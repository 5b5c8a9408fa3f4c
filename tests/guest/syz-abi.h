/*
 * What the syzkaller-like host (tests/e2e/syz-host.c) and its guest
 * executor (tests/guest/syz-guest.c) share: the layout of the shared
 * memory and the states of the snapshot handshake, after syzkaller's
 * snapshot mode (an input area, then a header with a state word and
 * where the output is; the state moves Handshake -> Ready -> Snapshotted
 * once, then Execute -> Executed for each input).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef TESTS_GUEST_SYZ_ABI_H
#define TESTS_GUEST_SYZ_ABI_H

#include <stdint.h>

#define SYZ_SHMEM_SIZE          (4u << 20)
#define SYZ_DOORBELL_SIZE       (1u << 20)
#define SYZ_INPUT_MAX           (1u << 20)      /* the input, at 0 */
#define SYZ_HEADER              SYZ_INPUT_MAX   /* struct syz_header */
#define SYZ_OUTPUT              (SYZ_HEADER + 4096)

enum syz_state {
    SYZ_INITIAL,
    SYZ_HANDSHAKE,      /* host: ready to snapshot */
    SYZ_READY,          /* guest: set up, waiting for inputs */
    SYZ_SNAPSHOTTED,    /* host: the snapshot is taken */
    SYZ_EXECUTE,        /* host: a new input, the VM restored */
    SYZ_EXECUTED,       /* guest: the output is there */
    SYZ_FAILED,
};

struct syz_header {
    uint32_t state;
    uint32_t output_offset;     /* from SYZ_OUTPUT */
    uint32_t output_size;
};

/*
 * An input: what the guest must do, and the words it sums.  At Handshake,
 * @pages is how many MiB of guest RAM the guest fills before Ready.
 */
struct syz_input {
    uint32_t seq;
    uint32_t pages;             /* guest RAM pages to write */
    uint32_t len;               /* words of data */
    uint32_t data[];
};

struct syz_output {
    uint32_t seq;
    uint32_t sum;               /* of the input's data, times seq */
    uint32_t errors;            /* restore checks that failed */
    uint32_t last_error;        /* SYZ_ERR_ */
    uint32_t intrmask;          /* the doorbell's IntrMask as found */
    uint32_t runs;              /* inputs this guest RAM has seen: 1 */
};

#define SYZ_ERR_COUNTER         1       /* guest RAM not restored */
#define SYZ_ERR_PAGE            2       /* a written page not restored */
#define SYZ_ERR_INPUT           3       /* input larger than the area */

/* IntrMask of the doorbell device at the snapshot */
#define SYZ_MASK_SNAPSHOT       0x5a5au

/* ivshmem's registers (BAR 0), and its PCI id */
#define IVSHMEM_ID              0x11101af4u
#define IVSHMEM_INTRMASK        0
#define IVSHMEM_DOORBELL        12
/* The host's eventfd: peer 1, vector 0 */
#define SYZ_HOST_PEER           1

#endif
