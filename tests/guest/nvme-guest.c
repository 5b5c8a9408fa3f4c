/*
 * L2 guest of the VFIO test for MSI-X: a multiboot kernel that drives
 * QEMU's emulated NVMe controller (in L1) passed through with vfio-pci,
 * without end.  No namespace is needed: admin commands and broadcast
 * flushes are enough to make the controller write guest RAM by DMA and
 * raise MSI-X interrupts.
 *
 * Set-up: MSI-X with vector 0 for the admin completion queue and vector 1
 * for one I/O queue pair; the controller enabled with both queues in
 * guest RAM.  Each round then
 *  - asks the controller to identify itself into one of 16 pages (DMA),
 *    and checks the data (vendor, serial number) and the completion;
 *  - flushes through the I/O queue pair;
 *  - checks that each completion came with its interrupt, and that the
 *    controller registers still hold what was set (a reset clears them).
 * Every few seconds a vector is masked for a while, to check pending bits
 * across an update (the test updates the VM inside these windows):
 *  - PHASE_PENDING: a flush completes on the masked vector, the PBA shows
 *    it pending; a second later the PBA must still show it, and unmasking
 *    must deliver the interrupt;
 *  - PHASE_MASKED: the vector is masked; a second later a flush completes
 *    on it, which must show in the PBA and be delivered on unmasking.
 *
 * Results live in a mailbox at MAILBOX (see struct mailbox), read by the
 * test with pmemsave; COM1 gets a '.' per 64 rounds.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "l2.h"

#define MAILBOX         0x500000
#define ID_PAGES        0x600000        /* 16 pages of identify data */
#define ASQ_BASE        0x700000
#define ACQ_BASE        0x701000
#define IOSQ_BASE       0x702000
#define IOCQ_BASE       0x703000
#define QSIZE           16
#define VEC_BASE        0x41            /* IDT vector of MSI-X vector 0 */
#define NVEC            2
#define SERIAL          "cprnvme"

struct mailbox {
    uint32_t magic;             /* MAILBOX_MAGIC once running */
    uint32_t bar0;
    uint32_t rounds;            /* rounds that checked out */
    uint32_t errors;
    uint32_t last_error;        /* what the last error was, see ERR_ */
    uint32_t irqs[NVEC];        /* interrupts per MSI-X vector */
    uint32_t completions[NVEC]; /* completions seen per vector */
    uint32_t phase;             /* PHASE_ */
    uint32_t pending_ok;        /* PHASE_PENDING windows that checked out */
    uint32_t masked_ok;         /* PHASE_MASKED windows that checked out */
};

#define MAILBOX_MAGIC   0x454d564e      /* "NVME" */
#define PHASE_RUN       0
#define PHASE_PENDING   1
#define PHASE_MASKED    2

#define ERR_NO_NVME     1
#define ERR_NO_MSIX     2
#define ERR_NOT_READY   3
#define ERR_STATUS      4       /* a command failed */
#define ERR_TIMEOUT     5       /* a command did not complete */
#define ERR_IDENTIFY    6       /* identify data wrong */
#define ERR_NO_IRQ      7       /* a completion's interrupt never came */
#define ERR_REGS        8       /* controller registers changed */
#define ERR_PBA         9       /* masked vector not shown pending */

/* Written by the guest, read by the host behind the compiler's back */
typedef volatile struct mailbox shared_mailbox;

struct nvme_cmd {
    uint32_t cdw0, nsid, rsvd[2];
    uint32_t mptr[2], prp1[2], prp2[2];
    uint32_t cdw10, cdw11, cdw12, cdw13, cdw14, cdw15;
};

struct nvme_cqe {
    uint32_t result, rsvd, sq, status;
};

/* Queue entries and DMA pages, shared with the controller */
typedef volatile struct nvme_cmd shared_cmd;
typedef volatile struct nvme_cqe shared_cqe;        /* the same */
typedef volatile uint8_t shared_u8;                 /* the same */

struct queue {
    int qid, vector;
    shared_cmd *sq;
    shared_cqe *cq;
    uint16_t tail, head, cid;
    uint32_t phase;
};

static shared_mailbox *const mb = (shared_mailbox *)MAILBOX;
static shared_u32 *regs;
static shared_u32 *msix_table;
static shared_u32 *msix_pba;
static uint32_t dstrd;
static struct queue admin = {
    0, 0, (void *)ASQ_BASE, (void *)ACQ_BASE, 0, 0, 0, 1
};
static struct queue io = {
    1, 1, (void *)IOSQ_BASE, (void *)IOCQ_BASE, 0, 0, 0, 1
};

static void fail(uint32_t what)
{
    mb->errors++;
    mb->last_error = what;
}

void vec0_irq(void)
{
    mb->irqs[0]++;
    lapic_eoi();
}

void vec1_irq(void)
{
    mb->irqs[1]++;
    lapic_eoi();
}

L2_IRQ_ENTRY(vec0_entry, vec0_irq);
L2_IRQ_ENTRY(vec1_entry, vec1_irq);

/* Wait until @n changes of the CMOS seconds, i.e. n - 1 to n seconds */
static void wait_seconds(int n)
{
    uint8_t s = cmos_seconds();

    while (n > 0) {
        if (cmos_seconds() != s) {
            s = cmos_seconds();
            n--;
        }
        cpu_relax();
    }
}

/* Poll @cond for up to about 3 seconds */
#define WAIT_FOR(cond) ({                                       \
    uint8_t s_ = cmos_seconds();                                \
    int left_ = 3;                                              \
    while (!(cond) && left_ > 0) {                              \
        if (cmos_seconds() != s_) {                             \
            s_ = cmos_seconds();                                \
            left_--;                                            \
        }                                                       \
        cpu_relax();                                            \
    }                                                           \
    (cond);                                                     \
})

static shared_u32 *doorbell(int qid, int cq)
{
    return regs + (0x1000 + (2 * qid + cq) * (4 << dstrd)) / 4;
}

static void submit(struct queue *q, const struct nvme_cmd *cmd)
{
    shared_cmd *slot = &q->sq[q->tail];

    q->cid++;
    *slot = *cmd;
    slot->cdw0 |= (uint32_t)q->cid << 16;
    q->tail = (q->tail + 1) % QSIZE;
    *doorbell(q->qid, 0) = q->tail;
}

/* Wait for the next completion on @q; its status, or -1 on time-out */
static int complete(struct queue *q)
{
    shared_cqe *cqe = &q->cq[q->head];
    uint32_t status;

    if (!WAIT_FOR(((cqe->status >> 16) & 1) == q->phase)) {
        fail(ERR_TIMEOUT);
        return -1;
    }
    status = cqe->status >> 17;
    q->head = (q->head + 1) % QSIZE;
    if (q->head == 0) {
        q->phase ^= 1;
    }
    *doorbell(q->qid, 1) = q->head;
    mb->completions[q->vector]++;
    if (status) {
        fail(ERR_STATUS);
    }
    return status;
}

/* Run one command on @q; its status, or -1 */
static int run(struct queue *q, const struct nvme_cmd *cmd)
{
    submit(q, cmd);
    return complete(q);
}

/* Each completion brings its interrupt, unless the vector is masked. */
static void check_irq(int vector)
{
    if (!WAIT_FOR(mb->irqs[vector] >= mb->completions[vector])) {
        fail(ERR_NO_IRQ);
        mb->irqs[vector] = mb->completions[vector];
    }
}

static void msix_mask(int vector, int masked)
{
    msix_table[vector * 4 + 3] = masked;
}

static int msix_pending(int vector)
{
    return (msix_pba[vector / 32] >> (vector % 32)) & 1;
}

static int setup_msix(int dev)
{
    int cap = pci_find_cap(dev, 0x11), i;
    uint32_t table, pba;

    if (!cap) {
        return -1;
    }
    table = pci_read(dev, cap + 4);
    pba = pci_read(dev, cap + 8);
    msix_table = (shared_u32 *)(pci_bar(dev, table & 7) + (table & ~7u));
    msix_pba = (shared_u32 *)(pci_bar(dev, pba & 7) + (pba & ~7u));
    if (!pci_bar(dev, table & 7) || !pci_bar(dev, pba & 7)) {
        return -1;
    }
    l2_set_gate(VEC_BASE, vec0_entry);
    l2_set_gate(VEC_BASE + 1, vec1_entry);
    l2_irq_setup();
    /* Enable with the function masked, program the vectors, unmask. */
    pci_write(dev, cap, pci_read(dev, cap) | (3u << 30));
    for (i = 0; i < NVEC; i++) {
        msix_table[i * 4] = LAPIC;
        msix_table[i * 4 + 1] = 0;
        msix_table[i * 4 + 2] = VEC_BASE + i;
        msix_mask(i, 0);
    }
    pci_write(dev, cap, pci_read(dev, cap) & ~(1u << 30));
    return 0;
}

static void set_prp(struct nvme_cmd *c, uint32_t addr)
{
    c->prp1[0] = addr;
}

static int setup_controller(void)
{
    struct nvme_cmd c = { 0 };

    dstrd = (regs[0x04 / 4] >> 0) & 0xf;    /* CAP bits 35:32 */
    regs[0x14 / 4] = 0;                     /* CC.EN = 0 */
    if (!WAIT_FOR(!(regs[0x1c / 4] & 1))) {
        return -1;
    }
    regs[0x24 / 4] = (QSIZE - 1) << 16 | (QSIZE - 1);
    regs[0x28 / 4] = ASQ_BASE;
    regs[0x2c / 4] = 0;
    regs[0x30 / 4] = ACQ_BASE;
    regs[0x34 / 4] = 0;
    /* 64-byte SQ entries, 16-byte CQ entries, 4 KiB pages, enable */
    regs[0x14 / 4] = 6 << 16 | 4 << 20 | 1;
    if (!WAIT_FOR(regs[0x1c / 4] & 1)) {
        return -1;
    }
    /* I/O completion queue 1 on vector 1, then its submission queue */
    c.cdw0 = 0x05;
    set_prp(&c, IOCQ_BASE);
    c.cdw10 = (QSIZE - 1) << 16 | 1;
    c.cdw11 = 1 << 16 | 2 | 1;
    if (run(&admin, &c)) {
        return -1;
    }
    c.cdw0 = 0x01;
    set_prp(&c, IOSQ_BASE);
    c.cdw11 = 1 << 16 | 1;
    return run(&admin, &c) ? -1 : 0;
}

/* The registers as set: a reset of the controller would clear them */
static int regs_kept(void)
{
    return regs[0x14 / 4] == (6 << 16 | 4 << 20 | 1) &&
           (regs[0x1c / 4] & 3) == 1 &&
           regs[0x24 / 4] == ((QSIZE - 1) << 16 | (QSIZE - 1)) &&
           regs[0x28 / 4] == ASQ_BASE && regs[0x30 / 4] == ACQ_BASE;
}

static int identify(uint32_t round)
{
    shared_u8 *page = (shared_u8 *)(ID_PAGES + (round % 16) * 4096);
    struct nvme_cmd c = { 0 };
    const char *sn = SERIAL;
    int i;

    for (i = 0; i < 4096; i++) {
        page[i] = 0xa5;
    }
    c.cdw0 = 0x06;
    set_prp(&c, (uint32_t)page);
    c.cdw10 = 1;                            /* CNS: the controller */
    if (run(&admin, &c)) {
        return -1;
    }
    if (page[0] != 0x36 || page[1] != 0x1b) {
        fail(ERR_IDENTIFY);
        return -1;
    }
    for (i = 0; sn[i]; i++) {
        if (page[4 + i] != sn[i]) {
            fail(ERR_IDENTIFY);
            return -1;
        }
    }
    return 0;
}

static int flush(void)
{
    struct nvme_cmd c = { 0 };

    c.cdw0 = 0x00;
    c.nsid = 0xffffffff;
    return run(&io, &c);
}

/* Vector 1 masked while a completion is pending, see the top comment */
static void masked_window(uint32_t phase)
{
    uint32_t irqs = mb->irqs[1];

    msix_mask(1, 1);
    if (phase == PHASE_PENDING) {
        flush();
        if (!WAIT_FOR(msix_pending(1))) {
            fail(ERR_PBA);
        }
    }
    mb->phase = phase;
    wait_seconds(2);
    if (phase == PHASE_MASKED) {
        flush();
        if (!WAIT_FOR(msix_pending(1))) {
            fail(ERR_PBA);
        }
    } else if (!msix_pending(1)) {
        fail(ERR_PBA);
    }
    mb->phase = PHASE_RUN;
    if (mb->irqs[1] != irqs) {
        fail(ERR_NO_IRQ);           /* delivered while masked */
    }
    msix_mask(1, 0);
    if (!WAIT_FOR(mb->irqs[1] == irqs + 1)) {
        fail(ERR_NO_IRQ);
    } else if (phase == PHASE_PENDING) {
        mb->pending_ok++;
    } else {
        mb->masked_ok++;
    }
    mb->irqs[1] = mb->completions[1];
}

void main(void)
{
    uint32_t round, errors;
    uint8_t s;
    int dev, next_phase = PHASE_PENDING;

    mb->magic = 0;
    dev = pci_find(0x00101b36);
    if (dev < 0) {
        fail(ERR_NO_NVME);
        halt();
    }
    /* Memory space, bus master, INTx off */
    pci_write(dev, 4, (pci_read(dev, 4) & 0xffff) | 0x6 | (1 << 10));
    mb->bar0 = pci_bar(dev, 0);
    regs = (shared_u32 *)mb->bar0;
    if (!regs || setup_msix(dev) < 0) {
        fail(ERR_NO_MSIX);
        halt();
    }
    if (setup_controller() < 0) {
        fail(ERR_NOT_READY);
        halt();
    }
    mb->magic = MAILBOX_MAGIC;

    s = cmos_seconds();
    for (round = 1;; round++) {
        errors = mb->errors;
        identify(round);
        flush();
        check_irq(0);
        check_irq(1);
        if (!regs_kept()) {
            fail(ERR_REGS);
        }
        if (mb->errors == errors) {
            mb->rounds++;
        }
        if (round % 64 == 0) {
            outb(0x3f8, '.');
        }
        /* A masked window every few seconds, the two kinds in turn */
        if (cmos_seconds() != s && round % 4 == 0) {
            masked_window(next_phase);
            next_phase = next_phase == PHASE_PENDING ? PHASE_MASKED :
                         PHASE_PENDING;
            s = cmos_seconds();
        }
    }
}
