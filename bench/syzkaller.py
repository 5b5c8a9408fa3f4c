#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""syzkaller's snapshot flow, loadvm per second, with and without
-machine cpr-snapshot=on, in the same run.

build/syz-host (tests/e2e/syz-host.c) runs syzkaller's sequence (its QEMU
arguments, HMP savevm syz once, then for each input: write it, loadvm
syz, wait on the doorbell's eventfd for the executor's answer) against
tests/guest/syz-guest.c, a 1 GiB guest that fills all of its RAM before
the snapshot and writes 16 pages per input.  Stock: the snapshot in a
qcow2 image, as syzkaller needs it; then the same with
-machine cpr-snapshot=on.  Prints inputs per second (each a loadvm and
the executor's run) and the median time of the loadvm command itself.

Environment: CPR_BENCH_ACCELS (default: tcg, and kvm if it works),
CPR_BENCH_MEM_MB (1024), CPR_BENCH_SECONDS (for the fast path, 5),
CPR_BENCH_LOADVM_RUNS (stock loadvm inputs, 5).
"""

import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "scripts"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "tests", "e2e"))
import cprlib  # noqa: E402
from syzkaller import syz_host  # noqa: E402

MEM = int(os.environ.get("CPR_BENCH_MEM_MB", "1024"))
SECONDS = float(os.environ.get("CPR_BENCH_SECONDS", "5"))
LOADVM_RUNS = int(os.environ.get("CPR_BENCH_LOADVM_RUNS", "5"))


def run(accel, machine, inputs, opts=(), extra=()):
    rc, s, out = syz_host(accel, machine, inputs,
                          ("-f", str(MEM)) + tuple(opts), mem=MEM,
                          extra=extra)
    if rc or not s or s["failed"]:
        sys.exit("syz-host failed (%d): %s" % (rc, out[-3000:]))
    return s


def main():
    print("syzkaller's snapshot flow, %d MiB guest (all of its RAM "
          "written), 16 pages per input" % MEM)
    print("%-5s %-28s %10s %14s %8s" % ("accel", "path", "inputs/s",
                                          "loadvm ms", "ratio"))
    for accel in cprlib.bench_accels():
        with tempfile.TemporaryDirectory(prefix="cpr-syz-bench-") as d:
            disk = os.path.join(d, "disk.qcow2")
            subprocess.run([os.path.join(os.path.dirname(cprlib.QEMU),
                                         "qemu-img"), "create", "-q", "-f",
                            "qcow2", disk, "1G"], check=True)
            stock = run(accel, "q35", LOADVM_RUNS,
                        extra=["-drive", "if=none,id=d0,file=" + disk])
        fast = run(accel, "q35,cpr-snapshot=on", 10 ** 6,
                   ("-s", str(SECONDS)))
        print("%-5s %-28s %10.2f %14.3f %8s" %
              (accel, "stock savevm/loadvm (qcow2)", stock["rate"],
               stock["loadvm_ms"], "1.0"))
        print("%-5s %-28s %10.1f %14.3f %8.0f" %
              (accel, "-machine cpr-snapshot=on", fast["rate"],
               fast["loadvm_ms"], fast["rate"] / stock["rate"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
