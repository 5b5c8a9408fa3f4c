/*
 * What the L2 guests of the VFIO test share; see l2.h.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "l2.h"

/* Multiboot header: magic, flags (align, meminfo), checksum */
__attribute__((section(".multiboot"), used, aligned(4)))
static const uint32_t multiboot_header[3] = {
    0x1badb002, 0x3, -(0x1badb002 + 0x3)
};

asm(".globl _start\n"
    "_start:\n"
    "  mov $0x80000, %esp\n"
    "  call main\n"
    "  call halt\n");

void halt(void)
{
    for (;;) {
        asm volatile("cli; hlt");
    }
}

uint32_t pci_read(int dev, int off)
{
    outl(0xcf8, 0x80000000u | (dev << 11) | (off & 0xfc));
    return inl(0xcfc);
}

void pci_write(int dev, int off, uint32_t v)
{
    outl(0xcf8, 0x80000000u | (dev << 11) | (off & 0xfc));
    outl(0xcfc, v);
}

int pci_find(uint32_t id)
{
    int dev;

    for (dev = 0; dev < 32; dev++) {
        if (pci_read(dev, 0) == id) {
            return dev;
        }
    }
    return -1;
}

int pci_find_cap(int dev, int cap_id)
{
    int cap = pci_read(dev, 0x34) & 0xfc;

    while (cap) {
        uint32_t hdr = pci_read(dev, cap);

        if ((hdr & 0xff) == (uint32_t)cap_id) {
            return cap;
        }
        cap = (hdr >> 8) & 0xfc;
    }
    return 0;
}

uint32_t pci_bar(int dev, int bar)
{
    uint32_t lo = pci_read(dev, 0x10 + bar * 4);

    if (lo & 1) {
        return 0;
    }
    if ((lo & 6) == 4 && pci_read(dev, 0x14 + bar * 4)) {
        return 0;               /* above 4 GiB */
    }
    return lo & ~0xfu;
}

struct idt_entry {
    uint16_t off_lo, sel;
    uint8_t zero, type;
    uint16_t off_hi;
} __attribute__((packed));

static struct idt_entry idt[256];

void l2_set_gate(int vector, void (*entry)(void))
{
    uint32_t handler = (uint32_t)entry;
    uint16_t cs;

    asm volatile("mov %%cs, %0" : "=r"(cs));
    idt[vector].off_lo = handler & 0xffff;
    idt[vector].off_hi = handler >> 16;
    idt[vector].sel = cs;
    idt[vector].type = 0x8e;
}

void l2_irq_setup(void)
{
    struct { uint16_t limit; uint32_t base; } __attribute__((packed)) idtr;

    idtr.limit = sizeof(idt) - 1;
    idtr.base = (uint32_t)idt;
    asm volatile("lidt %0" : : "m"(idtr));
    /* Mask the 8259s: only the vectors given a gate are used. */
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    /* Software-enable the local APIC, spurious vector 0xff. */
    *(shared_u32 *)(LAPIC + 0xf0) = 0x1ff;
    asm volatile("sti");
}

void lapic_eoi(void)
{
    *(shared_u32 *)(LAPIC + 0xb0) = 0;
}

uint8_t cmos_seconds(void)
{
    outb(0x70, 0x00);
    return inb(0x71);
}
