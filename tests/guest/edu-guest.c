/*
 * L2 guest of the VFIO test: a multiboot kernel that drives QEMU's edu
 * device (docs/specs/edu.txt) passed through with vfio-pci, without end.
 *
 * Each round copies half a page of RAM into edu's buffer by DMA and back
 * into another page, both DMAs raising an MSI on completion, and checks that
 * the copy equals the original.  It also checks that edu's factorial
 * register keeps the value computed at start (a device reset would show
 * as failed DMA: bus mastering would be off).  The interrupt handler
 * counts DMA completion interrupts, to compare with the DMAs completed.
 *
 * Results live in a mailbox at MAILBOX (see struct mailbox), read by the
 * test with pmemsave; COM1 gets a '.' per 16 rounds.
 *
 * Start-up and helpers shared with the other L2 guest are in l2.c.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "l2.h"

#define MAILBOX         0x500000
#define SRC_PAGES       0x600000
#define DST_PAGES       0x700000
#define EDU_BUF         0x40000
#define MSI_VECTOR      0x40
#define DMA_IRQ         0x100
/* edu in QEMU 7.2 refuses a transfer that ends at its buffer's end */
#define DMA_LEN         2048

struct mailbox {
    uint32_t magic;             /* MAILBOX_MAGIC once running */
    uint32_t edu_id;            /* edu identification register */
    uint32_t bar0;
    uint32_t rounds;            /* rounds whose copy checked out */
    uint32_t errors;
    uint32_t last_error;        /* what the last error was, see ERR_ */
    uint32_t dma_irqs;          /* DMA completion interrupts */
    uint32_t dma_done;          /* DMAs seen complete by polling */
    uint32_t spurious;          /* interrupts with no known cause */
    uint32_t fact;              /* edu's factorial register at start */
};

#define MAILBOX_MAGIC   0x45445547      /* "GUDE" */
#define ERR_NO_EDU      1
#define ERR_COPY        2
#define ERR_FACT        3
#define ERR_DMA_STUCK   4
#define ERR_NO_MSI      5

/* Written by the guest, read by the host behind the compiler's back */
typedef volatile struct mailbox shared_mailbox;

static shared_mailbox *const mb = (shared_mailbox *)MAILBOX;
static shared_u32 *edu;

static void fail(uint32_t what)
{
    mb->errors++;
    mb->last_error = what;
}

/* The MSI handler */
void edu_irq(void)
{
    uint32_t st = edu[0x24 / 4];

    if (st & DMA_IRQ) {
        mb->dma_irqs++;
    }
    if (!(st & DMA_IRQ)) {
        mb->spurious++;
    }
    edu[0x64 / 4] = st;
    lapic_eoi();
}

L2_IRQ_ENTRY(irq_entry, edu_irq);

static void setup_interrupts(void)
{
    l2_set_gate(MSI_VECTOR, irq_entry);
    l2_irq_setup();
}

/* Enable MSI (64-bit capable, one vector) towards the boot CPU. */
static int enable_msi(int dev)
{
    int cap = pci_find_cap(dev, 0x05);

    if (!cap) {
        return -1;
    }
    pci_write(dev, cap + 4, LAPIC);
    pci_write(dev, cap + 8, 0);
    pci_write(dev, cap + 12, MSI_VECTOR);
    pci_write(dev, cap, pci_read(dev, cap) | (1 << 16));
    return 0;
}

static int dma(uint32_t src, uint32_t dst, uint32_t cmd)
{
    uint32_t spins = 0;

    /* 32-bit writes set the whole 64-bit registers */
    edu[0x80 / 4] = src;
    edu[0x88 / 4] = dst;
    edu[0x90 / 4] = DMA_LEN;
    edu[0x98 / 4] = cmd | 1 | 4;
    while (edu[0x98 / 4] & 1) {
        if (++spins == 0) {
            fail(ERR_DMA_STUCK);
            return -1;
        }
        cpu_relax();
    }
    mb->dma_done++;
    /*
     * The next DMA only once this one's interrupt came: two MSIs pending
     * at once would be one eventfd signal and one interrupt (while no
     * QEMU runs the VM), so the count of interrupts would lag the DMAs
     */
    spins = 0;
    while (mb->dma_irqs < mb->dma_done) {
        if (++spins == 0) {
            fail(ERR_DMA_STUCK);
            return -1;
        }
        cpu_relax();
    }
    return 0;
}

static uint32_t pattern(uint32_t round, uint32_t i)
{
    return (round * 0x9e3779b1u) ^ (i * 0x85ebca6bu);
}

void main(void)
{
    uint32_t round, i, k;
    int dev;

    mb->magic = 0;
    dev = pci_find(0x11e81234);
    if (dev < 0) {
        fail(ERR_NO_EDU);
        halt();
    }
    /* Memory space, bus master, INTx off */
    pci_write(dev, 4, (pci_read(dev, 4) & 0xffff) | 0x6 | (1 << 10));
    mb->bar0 = pci_read(dev, 0x10) & ~0xfu;
    edu = (shared_u32 *)mb->bar0;
    mb->edu_id = edu[0];
    setup_interrupts();
    if (enable_msi(dev) < 0) {
        fail(ERR_NO_MSI);
    }
    edu[0x08 / 4] = 5;
    while (edu[0x20 / 4] & 1) {
        cpu_relax();
    }
    mb->fact = edu[0x08 / 4];
    mb->magic = MAILBOX_MAGIC;

    for (round = 1;; round++) {
        shared_u32 *src, *dst;

        k = round % 16;
        src = (shared_u32 *)(SRC_PAGES + k * 4096);
        dst = (shared_u32 *)(DST_PAGES + k * 4096);
        for (i = 0; i < DMA_LEN / 4; i++) {
            src[i] = pattern(round, i);
            dst[i] = 0;
        }
        if (dma((uint32_t)src, EDU_BUF, 0) < 0 ||
            dma(EDU_BUF, (uint32_t)dst, 2) < 0) {
            continue;
        }
        for (i = 0; i < DMA_LEN / 4; i++) {
            if (dst[i] != pattern(round, i)) {
                fail(ERR_COPY);
                break;
            }
        }
        if (edu[0x08 / 4] != mb->fact) {
            fail(ERR_FACT);
        }
        if (i == DMA_LEN / 4) {
            mb->rounds++;
        }
        if (round % 16 == 0) {
            outb(0x3f8, '.');
        }
    }
}
