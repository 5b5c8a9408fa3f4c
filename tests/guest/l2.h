/*
 * What the L2 guests of the VFIO test share (tests/guest/l2.c): start-up,
 * port I/O, PCI configuration space, interrupt gates, the local APIC and
 * the CMOS clock.  They are multiboot kernels, 32-bit and freestanding,
 * started by QEMU's loader in flat protected mode after SeaBIOS assigned
 * the PCI BARs; each provides main().
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef TESTS_GUEST_L2_H
#define TESTS_GUEST_L2_H

#include <stdint.h>

#define LAPIC           0xfee00000u

/*
 * Memory the device or the host reads and writes behind the compiler's
 * back: device registers, the local APIC, DMA pages, the mailbox.
 */
typedef volatile uint32_t shared_u32;

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

static inline void outw(uint16_t port, uint16_t v)
{
    asm volatile("outw %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint16_t inw(uint16_t port)
{
    uint16_t v;

    asm volatile("inw %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline void outb(uint16_t port, uint8_t v)
{
    asm volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
    uint8_t v;

    asm volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline void cpu_relax(void)
{
    asm volatile("pause");
}

/* The guest's own code, called once set up */
void main(void);

/* Stop for good */
void halt(void) __attribute__((noreturn));

uint32_t pci_read(int dev, int off);
void pci_write(int dev, int off, uint32_t v);
/* Slot of the first device with @id (device << 16 | vendor) on bus 0 */
int pci_find(uint32_t id);
/* Offset of capability @cap_id in @dev's config space, or 0 */
int pci_find_cap(int dev, int cap_id);
/* Address of memory BAR @bar (below 4 GiB), or 0 */
uint32_t pci_bar(int dev, int bar);

/*
 * Route interrupt @vector to @entry, an assembly stub made by
 * L2_IRQ_ENTRY; l2_irq_setup() masks the 8259s, enables the local APIC
 * and interrupts.
 */
void l2_set_gate(int vector, void (*entry)(void));
void l2_irq_setup(void);
void lapic_eoi(void);

/* An interrupt gate's entry calling the C function @handler */
#define L2_IRQ_ENTRY(entry, handler)                                \
    void entry(void);                                               \
    asm(".globl " #entry "\n" #entry ":\n"                          \
        "  pusha\n  cld\n  call " #handler "\n  popa\n  iret\n")

/* Seconds of the CMOS clock, for waits in wall-clock time */
uint8_t cmos_seconds(void);

#endif
