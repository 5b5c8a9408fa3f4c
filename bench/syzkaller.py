#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""syzkaller's snapshot flow, loadvm per second, with and without
-machine cpr-snapshot=on, in the same run; then parallel workers, from
VM fork and as independent VMs.

build/syz-host (tests/e2e/syz-host.c) runs syzkaller's sequence (its QEMU
arguments, HMP savevm syz once, then for each input: write it, loadvm
syz, wait on the doorbell's eventfd for the executor's answer) against
tests/guest/syz-guest.c, a 1 GiB guest that fills all of its RAM before
the snapshot and writes 16 pages per input.  Stock: the snapshot in a
qcow2 image, as syzkaller needs it; then the same with
-machine cpr-snapshot=on, and the previous path of that
(cpr-restore-plan=off: each loadvm loads the device state stream
instead of replaying the restore plan).  Prints inputs per second (each
a loadvm and the executor's run) and the median time of the loadvm
command itself.

Parallel workers (N = 1 and 2, one per core here): from VM fork (the VM
becomes a fork point once the executor waits for inputs, N children run
inputs at the same time, each going back to the fork point with
cpr-fork-reset before every input; syz-host -F N), next to N independent
VMs each with its own in-memory snapshot (cpr-snapshot=on), all started
at once.  Aggregate inputs per second and the Pss of all the QEMUs.

Environment: CPR_BENCH_ACCELS (default: tcg, and kvm if it works),
CPR_BENCH_MEM_MB (1024), CPR_BENCH_SECONDS (for the fast path, 5),
CPR_BENCH_LOADVM_RUNS (stock loadvm inputs, 5).
"""

import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "scripts"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "tests", "e2e"))
import cprlib  # noqa: E402
from syzkaller import SUMMARY, SYZ_GUEST, SYZ_HOST, syz_host  # noqa: E402

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


def workers(accel, n, fork):
    """Aggregate inputs/s and Pss (MiB) of @n workers."""
    cpu = [] if accel == "kvm" else ["-c", "max"]
    qemu = [cprlib.QEMU, "-accel", accel, "-m", str(MEM), "-display",
            "none", "-nodefaults", "-kernel", SYZ_GUEST]
    opts = ["-s", str(SECONDS), "-n", "1000000", "-f", str(MEM)] + cpu
    if fork:
        cmds = [[SYZ_HOST, "-F", str(n)] + opts + ["--"] + qemu +
                ["-machine", "q35,memfd-alloc=on"]]
    else:
        cmds = [[SYZ_HOST] + opts + ["--"] + qemu +
                ["-machine", "q35,cpr-snapshot=on"]] * n
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, text=True)
             for c in cmds]
    rate, pss = 0.0, 0
    for p in procs:
        out = p.communicate(timeout=900)[0]
        m = SUMMARY.search(out)
        if p.returncode or not m or int(m[6]):
            sys.exit("syz-host failed (%d): %s" % (p.returncode, out[-3000:]))
        rate += float(m[3])
        pss += sum(int(k) for k in re.findall(r"pss-kb \w+ (\d+)", out))
    return rate, pss / 1024


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
        old = run(accel, "q35,cpr-snapshot=on,cpr-restore-plan=off",
                  10 ** 6, ("-s", str(SECONDS)))
        print("%-5s %-28s %10.2f %14.3f %8s" %
              (accel, "stock savevm/loadvm (qcow2)", stock["rate"],
               stock["loadvm_ms"], "1.0"))
        print("%-5s %-28s %10.1f %14.3f %8.0f" %
              (accel, "-machine cpr-snapshot=on", fast["rate"],
               fast["loadvm_ms"], fast["rate"] / stock["rate"]))
        print("%-5s %-28s %10.1f %14.3f %8.0f" %
              (accel, "  previous path (no plan)", old["rate"],
               old["loadvm_ms"], old["rate"] / stock["rate"]), flush=True)
    print()
    print("parallel workers, %d MiB guest, %g s: aggregate inputs/s, Pss "
          "of all QEMUs" % (MEM, SECONDS))
    print("%-5s %-36s %3s %10s %10s" % ("accel", "workers", "N", "inputs/s",
                                         "Pss MiB"))
    for accel in cprlib.bench_accels():
        for fork in (True, False):
            for n in (1, 2):
                rate, pss = workers(accel, n, fork)
                print("%-5s %-36s %3d %10.1f %10.0f" %
                      (accel, "VM fork, cpr-fork-reset" if fork else
                       "independent VMs, cpr-snapshot=on", n, rate, pss),
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
