/*
 * libFuzzer target: the cpr-trigger device's registers and doorbell
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The accelerator is qtest's: the harness plays the vCPU whose access
 * reaches the device (TCG would leave the access by a long jump, to a
 * vCPU loop the harness does not run).
 *
 * An input is a sequence of 6-byte operations: a byte naming what to do,
 * a byte naming the register (its offset in the 4 KiB BAR, divided by
 * 4), and a 32-bit little-endian value.  The operation's low two bits:
 * 0, a 4-byte write from the guest's vCPU; 1, a read; 2, the same write
 * without a vCPU (a device's DMA reaching the BAR); 3, the value's low
 * byte rung on the host's doorbell.  The main loop runs after each, so
 * that the snapshots and restores asked for are done.
 */

#include "qemu/osdep.h"
#include "hw/core/cpu.h"
#include "chardev/char.h"
#include "qemu/bswap.h"
#include "fuzz.h"
#include "cpr_fuzz.h"

/* Where the harness maps the BAR; the device's slot on the root bus */
#define CPR_TRIGGER_FUZZ_BAR    0xe0000000u
#define CPR_TRIGGER_FUZZ_SLOT   4

static GString *cpr_trigger_fuzz_cmdline(FuzzTarget *t)
{
    return g_string_new(CPR_FUZZ_PC " -accel qtest -chardev null,id=bell "
                        "-device cpr-trigger,chardev=bell,addr=04.0");
}

/* A 4-byte write to PCI configuration space of the device */
static void cpr_trigger_fuzz_config(QTestState *s, uint8_t reg, uint32_t val)
{
    qtest_outl(s, 0xcf8, 0x80000000u | CPR_TRIGGER_FUZZ_SLOT << 11 | reg);
    qtest_outl(s, 0xcfc, val);
}

/* Map the BAR and let it decode */
static void cpr_trigger_fuzz_pre(QTestState *s)
{
    cpr_fuzz_pre();
    static const uint8_t seed[] = {
        0, 1, 1, 0, 0, 0,                   /* snapshot */
        0, 3, 7, 0, 0, 0,                   /* result */
        0, 1, 2, 0, 0, 0,                   /* restore */
        3, 0, 'r', 0, 0, 0,                 /* the host rings */
        1, 2, 0, 0, 0, 0,                   /* status */
    };

    cpr_trigger_fuzz_config(s, 0x10, CPR_TRIGGER_FUZZ_BAR);
    cpr_trigger_fuzz_config(s, 0x04, 0x2);  /* memory space */
    g_assert(qtest_readl(s, CPR_TRIGGER_FUZZ_BAR) == 0x54525043);
    cpr_fuzz_write_seed("trigger.cprt", seed, sizeof(seed));
}

static void cpr_trigger_fuzz(QTestState *s, const unsigned char *data,
                             size_t size)
{
    Chardev *bell = qemu_chr_find("bell");

    for (; size >= 6; data += 6, size -= 6) {
        uint64_t addr = CPR_TRIGGER_FUZZ_BAR + data[1] * 4;
        uint32_t val = ldl_le_p(data + 2);
        uint8_t byte = val;

        switch (data[0] & 3) {
        case 0:
            current_cpu = first_cpu;
            qtest_writel(s, addr, val);
            current_cpu = NULL;
            break;
        case 1:
            qtest_readl(s, addr);
            break;
        case 2:
            qtest_writel(s, addr, val);
            break;
        case 3:
            qemu_chr_be_write(bell, &byte, 1);
            break;
        }
        flush_events(s);
    }
}

static void cpr_trigger_fuzz_register(void)
{
    fuzz_add_target(&(FuzzTarget) {
        .name = "cpr-trigger",
        .description = "the cpr-trigger device's registers and doorbell",
        .get_init_cmdline = cpr_trigger_fuzz_cmdline,
        .pre_fuzz = cpr_trigger_fuzz_pre,
        .fuzz = cpr_trigger_fuzz,
    });
}

fuzz_target_init(cpr_trigger_fuzz_register);
