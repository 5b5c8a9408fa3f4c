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


def main():
    args = cprlib.l1_args("q35", "cpr.test=vhost")
    return cprlib.relay_l1_tap(args, "vhost-l1.console")


if __name__ == "__main__":
    sys.exit(main())
