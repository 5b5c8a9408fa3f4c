/*
 * A guest executor for syzkaller's snapshot mode, as syzkaller's own
 * executor behaves (tests/e2e/syz-host.c is the host side; the layout is
 * in syz-abi.h).  A multiboot kernel; the host starts QEMU with
 * syzkaller's snapshot arguments:
 *
 *  - ivshmem-doorbell (master, one vector): the guest rings the host's
 *    eventfd (peer 1, vector 0) after each state change;
 *  - ivshmem-plain on a shared memory-backend-file: input, header and
 *    output, left out of the snapshot with x-ignore-shared.
 *
 * Without the ivshmem-plain device, the doorbell's own shared memory
 * serves (a single device, whose state the snapshot must then keep).
 *
 * The guest sets up and answers Handshake with Ready; the host takes the
 * snapshot with savevm while the guest waits for the state to change.
 * The running guest acknowledges Snapshotted and halts; every loadvm
 * puts the guest back into its wait, where it finds Execute, runs the
 * input and answers Executed:
 *
 *  - checks that guest RAM is as at the snapshot (a counter is 0, the
 *    pages it writes, which the input before wrote too, hold their
 *    pattern again);
 *  - reads the doorbell's IntrMask into the output and sets it to the
 *    input's sequence number (kept across loadvm only if the device is
 *    excluded from restores);
 *  - writes input->pages pages of RAM, and sums the input's data (in
 *    words: under KVM here, each read of the BAR's memory costs about a
 *    microsecond and a half).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "l2.h"
#include "syz-abi.h"

#define WORK            0x1000000       /* pages the inputs write */
#define MAX_PAGES       4096
#define PATTERN         0x5eed0000u
#define FILL_START      0x2000000

/* Shared with the host behind the compiler's back */
typedef volatile struct syz_header shared_header;
typedef volatile struct syz_input shared_input;     /* the same */
typedef volatile struct syz_output shared_output;   /* the same */

static uint8_t *shm;
static shared_header *hdr;
static shared_u32 *bell_regs;
/* Guest RAM the inputs change: restored every time */
static volatile uint32_t runs;

static void ring(void)
{
    bell_regs[IVSHMEM_DOORBELL / 4] = SYZ_HOST_PEER << 16;
}

static void set_state(uint32_t state)
{
    hdr->state = state;
    ring();
}

static shared_u32 *page_word(uint32_t i)
{
    return (shared_u32 *)(WORK + i * 4096);
}

/* The doorbell (it has MSI-X) and the plain device, or -1 */
static void find_devices(int *bell, int *plain)
{
    int dev;

    *bell = *plain = -1;
    for (dev = 0; dev < 32; dev++) {
        if (pci_read(dev, 0) != IVSHMEM_ID) {
            continue;
        }
        if (pci_find_cap(dev, 0x11)) {
            *bell = dev;
        } else {
            *plain = dev;
        }
        pci_write(dev, 4, pci_read(dev, 4) | 6);
    }
}

static void execute(void)
{
    shared_input *in = (shared_input *)shm;
    shared_output *out = (shared_output *)(shm + SYZ_OUTPUT);
    uint32_t i, n, sum = 0, errors = 0, last = 0;

    if (runs != 0) {
        errors++;
        last = SYZ_ERR_COUNTER;
    }
    runs++;
    /* The pages the input before wrote, if it was as large */
    n = in->pages < MAX_PAGES ? in->pages : MAX_PAGES;
    for (i = 0; i < n; i++) {
        if (*page_word(i) != PATTERN + i) {
            errors++;
            last = SYZ_ERR_PAGE;
            break;
        }
    }
    out->intrmask = bell_regs[IVSHMEM_INTRMASK / 4];
    bell_regs[IVSHMEM_INTRMASK / 4] = in->seq;
    for (i = 0; i < n; i++) {
        *page_word(i) = in->seq;
    }
    if (in->len > (SYZ_INPUT_MAX - sizeof(struct syz_input)) / 4) {
        errors++;
        last = SYZ_ERR_INPUT;
    } else {
        for (i = 0; i < in->len; i++) {
            sum += in->data[i];
        }
    }
    out->seq = in->seq;
    out->sum = sum * in->seq;
    out->errors = errors;
    out->last_error = last;
    out->runs = runs;
    hdr->output_offset = 0;
    hdr->output_size = sizeof(struct syz_output);
    set_state(SYZ_EXECUTED);
}

void main(void)
{
    int bell, plain;
    uint32_t i, state, fill_mb;

    find_devices(&bell, &plain);
    if (bell < 0 || !pci_bar(bell, 0)) {
        halt();
    }
    bell_regs = (shared_u32 *)pci_bar(bell, 0);
    shm = (uint8_t *)pci_bar(plain >= 0 ? plain : bell, 2);
    if (!shm) {
        halt();
    }
    hdr = (shared_header *)(shm + SYZ_HEADER);

    while (hdr->state != SYZ_HANDSHAKE) {
        cpu_relax();
    }
    for (i = 0; i < MAX_PAGES; i++) {
        *page_word(i) = PATTERN + i;
    }
    /* RAM that is not zero, up to what the host asks (for benchmarks) */
    fill_mb = ((shared_input *)shm)->pages;
    for (i = FILL_START; i < fill_mb << 20; i += 4096) {
        *(shared_u32 *)i = i | 1;
    }
    bell_regs[IVSHMEM_INTRMASK / 4] = SYZ_MASK_SNAPSHOT;
    set_state(SYZ_READY);

    /* The snapshot is taken while the guest waits here. */
    while ((state = hdr->state) == SYZ_READY) {
        cpu_relax();
    }
    if (state == SYZ_EXECUTE) {
        execute();
    } else if (state == SYZ_SNAPSHOTTED) {
        /* Inputs run in the snapshot's copy of the guest, after loadvm */
        set_state(SYZ_READY);
    } else {
        set_state(SYZ_FAILED);
    }
    halt();
}
