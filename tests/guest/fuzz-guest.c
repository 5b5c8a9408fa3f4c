/*
 * Fuzzing harness guest for CPR snapshots: a multiboot kernel that takes
 * a snapshot through the cpr-trigger device and then runs "iterations"
 * without end, each ended by a restore request.
 *
 * The host talks to it through an ivshmem-plain device whose memory the
 * snapshot leaves alone (struct fuzz_io, at the start of its BAR 2): it
 * sets how many pages an iteration dirties, and reads the counters.
 *
 * Each iteration starts right after the snapshot command (the guest's
 * next instruction after the snapshot, again after every restore) and
 *  - checks that STATUS says TAKEN or RESTORED;
 *  - checks that RAM is as at the snapshot: a counter in guest RAM is
 *    still 0, and the first word of each page it dirtied last time holds
 *    the value it had then;
 *  - calls a routine in RAM, which must return what it did at the
 *    snapshot, then rewrites it and calls it again (under TCG, code
 *    translated from the rewritten routine must not survive a restore);
 *  - dirties io->pages pages (one word each) and the counter;
 *  - counts the iteration in the excluded memory and asks for a restore,
 *    with the iteration number as RESULT.
 * Errors are counted in the excluded memory (see ERR_).  Before the
 * snapshot, the guest writes every page of RAM from FILL_START up to
 * io->fill_mb MiB, so that RAM is not mostly zero (for benchmarks).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "l2.h"

#define WORK            0x1000000       /* pages dirtied by iterations */
#define MAX_PAGES       4096
#define PATTERN         0x5eed0000u
#define FILL_START      0x2000000
#define CODE            0x0f00000       /* a routine the guest rewrites */
#define CODE_SNAPSHOT   0x600d600d
#define CODE_CHANGED    0xbad0bad0

#define REG_MAGIC       0
#define REG_COMMAND     1
#define REG_STATUS      2
#define REG_RESULT      3
#define CMD_SNAPSHOT    1
#define CMD_RESTORE     2
#define ST_TAKEN        1
#define ST_RESTORED     2

/* In the memory the snapshot leaves alone */
struct fuzz_io {
    uint32_t magic;             /* IO_MAGIC once the guest runs */
    uint32_t pages;             /* set by the host: pages to dirty */
    uint32_t iterations;
    uint32_t errors;
    uint32_t last_error;        /* ERR_ */
    uint32_t last_status;       /* STATUS seen by the last iteration */
    uint32_t restored;          /* iterations that started restored */
    uint32_t fill_mb;           /* set by the host: fill RAM up to here */
};

#define IO_MAGIC        0x5a5a4655      /* "UFZZ" */
#define ERR_NO_DEVICE   1
#define ERR_STATUS      2       /* STATUS neither TAKEN nor RESTORED */
#define ERR_COUNTER     3       /* RAM counter not back to its value */
#define ERR_PAGE        4       /* a dirtied page not back to its value */
#define ERR_RESTORE     5       /* the restore request came back */
#define ERR_CODE        6       /* the routine in RAM not as expected */

/* Shared with the host and the device behind the compiler's back */
typedef volatile struct fuzz_io shared_io;
typedef volatile uint8_t shared_u8;                 /* the same */

static shared_io *io;
static shared_u32 *trigger;
/* Guest RAM the iterations change: restored every time */
static volatile uint32_t counter;

typedef uint32_t routine(void);

/* The routine at CODE: "mov $value, %eax; ret" */
static void write_routine(uint32_t value)
{
    shared_u8 *code = (shared_u8 *)CODE;
    int i;

    code[0] = 0xb8;
    for (i = 0; i < 4; i++) {
        code[1 + i] = value >> (8 * i);
    }
    code[5] = 0xc3;
}

static void fail(uint32_t what)
{
    io->errors++;
    io->last_error = what;
}

static uint32_t page_word(uint32_t i)
{
    return *(shared_u32 *)(WORK + i * 4096);
}

static void set_page_word(uint32_t i, uint32_t v)
{
    *(shared_u32 *)(WORK + i * 4096) = v;
}

void main(void)
{
    int trig = pci_find(0xc9701234), shm = pci_find(0x11101af4);
    uint32_t i, n, status;

    if (trig < 0 || shm < 0 || !pci_bar(trig, 0) || !pci_bar(shm, 2)) {
        halt();
    }
    pci_write(trig, 4, pci_read(trig, 4) | 2);
    pci_write(shm, 4, pci_read(shm, 4) | 2);
    trigger = (shared_u32 *)pci_bar(trig, 0);
    io = (shared_io *)pci_bar(shm, 2);
    if (trigger[REG_MAGIC] != 0x54525043) {
        fail(ERR_NO_DEVICE);
        halt();
    }
    for (i = 0; i < MAX_PAGES; i++) {
        set_page_word(i, PATTERN + i);
    }
    for (i = FILL_START; i < io->fill_mb << 20; i += 4096) {
        *(shared_u32 *)i = i | 1;
    }
    write_routine(CODE_SNAPSHOT);
    io->magic = IO_MAGIC;

    trigger[REG_COMMAND] = CMD_SNAPSHOT;
    /* Each iteration starts here. */
    status = trigger[REG_STATUS];
    io->last_status = status;
    if (status == ST_RESTORED) {
        io->restored++;
    } else if (status != ST_TAKEN) {
        fail(ERR_STATUS);
    }
    if (counter != 0) {
        fail(ERR_COUNTER);
    }
    n = io->pages < MAX_PAGES ? io->pages : MAX_PAGES;
    for (i = 0; i < n; i++) {
        if (page_word(i) != PATTERN + i) {
            fail(ERR_PAGE);
            break;
        }
    }
    if (((routine *)CODE)() != CODE_SNAPSHOT) {
        fail(ERR_CODE);
    }
    write_routine(CODE_CHANGED);
    if (((routine *)CODE)() != CODE_CHANGED) {
        fail(ERR_CODE);
    }
    counter++;
    for (i = 0; i < n; i++) {
        set_page_word(i, io->iterations);
    }
    io->iterations++;
    trigger[REG_RESULT] = io->iterations;
    trigger[REG_COMMAND] = CMD_RESTORE;
    fail(ERR_RESTORE);
    halt();
}
