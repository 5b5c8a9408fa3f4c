#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""VFIO live update with a real kernel VFIO: boot the L1 guest of
scripts/vfio-l1.sh under TCG with an emulated IOMMU, an edu device (MSI)
and an NVMe controller (MSI-X); the test program inside it
(tests/e2e/vfio-l1.c) passes each through to an L2 guest with our QEMU,
live-updates it and prints TAP, which this script relays.  The rest of
L1's console goes to build/vfio-l1.console."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "..", "scripts"))
import cprlib  # noqa: E402

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
L1 = os.path.join(TOP, "build", "guest", "vfio-l1")
QEMU = os.path.join(TOP, "build", "qemu-system-x86_64")


def main():
    args = [QEMU, "-machine", "q35,kernel-irqchip=split", "-accel", "tcg",
            "-m", "2048", "-display", "none", "-nodefaults", "-no-reboot",
            "-device", "intel-iommu,caching-mode=on,intremap=on",
            "-device", "edu",
            "-device", "nvme,serial=cprnvme",
            "-kernel", os.path.join(L1, "vmlinuz"),
            "-initrd", os.path.join(L1, "initrd.img"),
            "-append", "console=ttyS0 intel_iommu=on loglevel=3",
            "-serial", "stdio"]
    return cprlib.relay_l1_tap(args, "vfio-l1.console")


if __name__ == "__main__":
    sys.exit(main())
