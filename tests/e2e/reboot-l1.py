#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Reboot mode across a real kernel restart: boot the L1 guest of
scripts/vfio-l1.sh under TCG with kernel argument cpr.test=reboot and an
ext4 virtio disk that holds L1's own kernel and initramfs.  Inside L1
(tests/e2e/vfio-l1.c), our QEMU runs the counting boot-sector guest (L2)
with plain anonymous RAM and saves it with cprsave reboot to that disk;
L1 then restarts its kernel with kexec (a reset of the machine if kexec
fails: L1 says which), and a fresh QEMU restores L2 from the disk and
checks that it goes on without booting again.  Relays the TAP lines of
both boots under one plan; L1's console goes to build/reboot-l1.console."""

import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "..", "scripts"))
import cprlib  # noqa: E402
import tempfile

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
L1 = os.path.join(TOP, "build", "guest", "vfio-l1")
QEMU = os.path.join(TOP, "build", "qemu-system-x86_64")
PLAN = 4            # one line from the first boot, three from the second
RESULT = re.compile(r"^(not )?ok\b(?: \d+)?(?: -)? ?(.*)$")


def make_disk(workdir):
    """An ext4 image with L1's kernel and initramfs, for kexec."""
    files = os.path.join(workdir, "files")
    os.mkdir(files)
    for name in ("vmlinuz", "initrd.img"):
        shutil.copy(os.path.join(L1, name), files)
    disk = os.path.join(workdir, "l1-disk.img")
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", files, disk, "512M"],
                   check=True, stdout=subprocess.DEVNULL)
    return disk


def main():
    workdir = tempfile.mkdtemp(prefix="cpr-reboot-l1-",
                               dir=os.path.join(TOP, "build"))
    try:
        disk = make_disk(workdir)
        args = [QEMU, "-machine", "q35", "-accel", "tcg", "-m", "2048",
                "-display", "none", "-nodefaults",
                "-kernel", os.path.join(L1, "vmlinuz"),
                "-initrd", os.path.join(L1, "initrd.img"),
                "-append", "console=ttyS0 loglevel=3 cpr.test=reboot",
                "-drive", "file=%s,format=raw,if=virtio" % disk,
                "-serial", "stdio"]
        n = 0
        bad = 0
        print("TAP version 14")
        print("1..%d" % PLAN, flush=True)
        for line in cprlib.console_lines(args, "reboot-l1.console"):
            if line.startswith("# "):
                print(line, flush=True)
                continue
            m = RESULT.match(line)
            if not m:
                continue
            n += 1
            bad += m.group(1) is not None
            print("%sok %d - %s" % (m.group(1) or "", n, m.group(2)),
                  flush=True)
        if n != PLAN:
            print("# L1 ended after %d of %d tests; see "
                  "build/reboot-l1.console" % (n, PLAN))
            return 1
        return 1 if bad else 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
