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
 * Built 32-bit and freestanding: QEMU's multiboot loader starts it in flat
 * protected mode with SeaBIOS having assigned the PCI BARs.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <stdint.h>

#define MAILBOX         0x500000
#define SRC_PAGES       0x600000
#define DST_PAGES       0x700000
#define EDU_BUF         0x40000
#define MSI_VECTOR      0x40
#define LAPIC           0xfee00000u
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

/*
 * Memory the device or the host reads and writes behind the compiler's
 * back: edu's registers, the local APIC, DMA pages, the mailbox.
 */
typedef volatile uint32_t shared_u32;
typedef volatile struct mailbox shared_mailbox;     /* the same */

static shared_mailbox *const mb = (shared_mailbox *)MAILBOX;
static shared_u32 *edu;

/* Multiboot header: magic, flags (align, meminfo), checksum */
__attribute__((section(".multiboot"), used, aligned(4)))
static const uint32_t multiboot_header[3] = {
    0x1badb002, 0x3, -(0x1badb002 + 0x3)
};

static inline void outl(uint16_t port, uint32_t v)
{
    asm volatile("outl %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint32_t inl(uint16_t port)
{
    uint32_t v;

    asm volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline void outb(uint16_t port, uint8_t v)
{
    asm volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static uint32_t pci_read(int dev, int off)
{
    outl(0xcf8, 0x80000000u | (dev << 11) | (off & 0xfc));
    return inl(0xcfc);
}

static void pci_write(int dev, int off, uint32_t v)
{
    outl(0xcf8, 0x80000000u | (dev << 11) | (off & 0xfc));
    outl(0xcfc, v);
}

static void fail(uint32_t what)
{
    mb->errors++;
    mb->last_error = what;
}

/* Interrupt gate for the MSI vector, and its handler. */
struct idt_entry {
    uint16_t off_lo, sel;
    uint8_t zero, type;
    uint16_t off_hi;
} __attribute__((packed));

static struct idt_entry idt[256];

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
    *(shared_u32 *)(LAPIC + 0xb0) = 0;
}

asm(".globl irq_entry\n"
    "irq_entry:\n"
    "  pusha\n"
    "  cld\n"
    "  call edu_irq\n"
    "  popa\n"
    "  iret\n");

static void setup_interrupts(void)
{
    struct { uint16_t limit; uint32_t base; } __attribute__((packed)) idtr;
    uint32_t handler;
    uint16_t cs;

    asm("mov $irq_entry, %0" : "=r"(handler));
    asm volatile("mov %%cs, %0" : "=r"(cs));
    idt[MSI_VECTOR].off_lo = handler & 0xffff;
    idt[MSI_VECTOR].off_hi = handler >> 16;
    idt[MSI_VECTOR].sel = cs;
    idt[MSI_VECTOR].type = 0x8e;
    idtr.limit = sizeof(idt) - 1;
    idtr.base = (uint32_t)idt;
    asm volatile("lidt %0" : : "m"(idtr));
    /* Mask the 8259s: only the MSI vector has a gate. */
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    /* Software-enable the local APIC, spurious vector 0xff. */
    *(shared_u32 *)(LAPIC + 0xf0) = 0x1ff;
    asm volatile("sti");
}

static int find_edu(void)
{
    int dev;

    for (dev = 0; dev < 32; dev++) {
        if (pci_read(dev, 0) == 0x11e81234) {
            return dev;
        }
    }
    return -1;
}

/* Enable MSI (64-bit capable, one vector) towards the boot CPU. */
static int enable_msi(int dev)
{
    int cap = pci_read(dev, 0x34) & 0xfc;

    while (cap) {
        uint32_t hdr = pci_read(dev, cap);

        if ((hdr & 0xff) == 0x05) {
            pci_write(dev, cap + 4, LAPIC);
            pci_write(dev, cap + 8, 0);
            pci_write(dev, cap + 12, MSI_VECTOR);
            pci_write(dev, cap, hdr | (1 << 16));
            return 0;
        }
        cap = (hdr >> 8) & 0xfc;
    }
    return -1;
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
        asm volatile("pause");
    }
    mb->dma_done++;
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
    dev = find_edu();
    if (dev < 0) {
        fail(ERR_NO_EDU);
        for (;;) {
            asm volatile("hlt");
        }
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
        asm volatile("pause");
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

asm(".globl _start\n"
    "_start:\n"
    "  mov $0x80000, %esp\n"
    "  call main\n"
    "1: hlt\n"
    "  jmp 1b\n");
