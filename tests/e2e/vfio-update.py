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


def main():
    args = cprlib.l1_args("q35,kernel-irqchip=split", "intel_iommu=on", [
        "-device", "intel-iommu,caching-mode=on,intremap=on",
        "-device", "edu", "-device", "nvme,serial=cprnvme"])
    return cprlib.relay_l1_tap(args, "vfio-l1.console")


if __name__ == "__main__":
    sys.exit(main())
