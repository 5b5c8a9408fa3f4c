#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""vhost-net live update with a real kernel vhost-net: boot the L1 guest
of scripts/vfio-l1.sh under TCG with kernel argument cpr.test=vhost; the
test program inside it (tests/e2e/vhost-l1.c) runs an L2 guest streaming
TCP through virtio-net with vhost=on, live-updates it (restart and
transfer) and prints TAP, which this script relays.  The rest of L1's
console goes to build/vhost-l1.console."""

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
    args = [QEMU, "-machine", "q35", "-accel", "tcg", "-m", "2048",
            "-display", "none", "-nodefaults", "-no-reboot",
            "-kernel", os.path.join(L1, "vmlinuz"),
            "-initrd", os.path.join(L1, "initrd.img"),
            "-append", "console=ttyS0 loglevel=3 cpr.test=vhost",
            "-serial", "stdio"]
    return cprlib.relay_l1_tap(args, "vhost-l1.console")


if __name__ == "__main__":
    sys.exit(main())
