#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Restores per second of the in-process snapshot (cpr-snapshot) for a
1 GiB guest that dirties 1, 16, 256 and 4096 pages per iteration, next to
loadvm of the same guest in the same run.

The guest is the fuzzing harness (tests/guest/fuzz-guest.c), which
writes all of its RAM first (no zero pages for loadvm to skip); it takes
the snapshot itself through the cpr-trigger device and asks for a restore at
the end of every iteration, so nothing but the restore and the guest's
own work is timed.  The host counts iterations in the memory the snapshot
leaves alone.  The split of a restore (RAM, CPU, devices) is the median
of QEMU's cpr_snapshot_restore trace event over the run.

loadvm: the same guest, its CPR snapshot dropped, saved once with savevm
onto a qcow2 image and loaded again with loadvm (HMP) several times.

Environment: CPR_BENCH_ACCELS (default: tcg, and kvm if it works),
CPR_BENCH_MEM_MB (1024), CPR_BENCH_SECONDS (per page count, 3),
CPR_BENCH_LOADVM_RUNS (5).
"""

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "scripts"))
import cprlib  # noqa: E402
from fuzzvm import FuzzVm  # noqa: E402

MEM = int(os.environ.get("CPR_BENCH_MEM_MB", "1024"))
SECONDS = float(os.environ.get("CPR_BENCH_SECONDS", "3"))
LOADVM_RUNS = int(os.environ.get("CPR_BENCH_LOADVM_RUNS", "5"))
PAGES = (1, 16, 256, 4096)
TRACE = re.compile(r"cpr_snapshot_restore (\d+) pages in (\d+) ns, CPUs "
                   r"(\d+) ns, devices (\d+) ns \(reset \d+ ns\), all "
                   r"(\d+) ns")


def kvm_works():
    try:
        return subprocess.run(
            [cprlib.QEMU, "-accel", "kvm", "-machine", "none", "-display",
             "none", "-nodefaults", "-monitor", "stdio"], input=b"quit\n",
            capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def cpr_rates(accel):
    """{pages: (restores/s, median ms of all, RAM, CPU, devices)}"""
    log = tempfile.NamedTemporaryFile(prefix="cpr-bench-", suffix=".log",
                                      delete=False).name
    vm = FuzzVm(accel, pages=PAGES[0], mem_mb=MEM, fill=True,
                extra=["-trace", "cpr_snapshot_restore", "-D", log])
    out = {}
    try:
        vm.wait(lambda io: io["iterations"] > 100, timeout=300)
        for n in PAGES:
            vm.set("pages", n)
            time.sleep(0.5)
            start, t0 = vm.io()["iterations"], time.monotonic()
            pos = os.path.getsize(log)
            time.sleep(SECONDS)
            io, t1 = vm.io(), time.monotonic()
            if io["errors"]:
                raise cprlib.QmpError("guest errors: %s" % io)
            with open(log) as f:
                f.seek(pos)
                rows = [tuple(int(x) for x in m.groups())
                        for m in TRACE.finditer(f.read())]
            out[n] = [(io["iterations"] - start) / (t1 - t0)]
            out[n] += [statistics.median(r[i] for r in rows) / 1e6
                       for i in (4, 1, 2, 3)]
    finally:
        vm.kill()
        os.unlink(log)
    return out


def loadvm_ms(accel):
    """Median time of loadvm of the same guest, in ms."""
    work = tempfile.mkdtemp(prefix="cpr-bench-loadvm-")
    img = os.path.join(work, "state.qcow2")
    subprocess.run([os.path.join(cprlib.TOP, "build", "qemu-img"), "create",
                    "-q", "-f", "qcow2", img, "1G"], check=True)
    vm = FuzzVm(accel, pages=16, mem_mb=MEM, fill=True,
                extra=["-drive", "if=none,id=state,file=%s" % img])
    times = []
    try:
        vm.wait(lambda io: io["iterations"] > 100, timeout=300)
        vm.qmp.cmd("stop")
        vm.qmp.cmd("cpr-snapshot-drop")
        hmp(vm, "savevm bench")
        for _ in range(LOADVM_RUNS):
            t = time.monotonic()
            hmp(vm, "loadvm bench")
            times.append((time.monotonic() - t) * 1e3)
    finally:
        vm.kill()
        os.unlink(img)
        os.rmdir(work)
    return statistics.median(times)


def hmp(vm, line):
    out = vm.qmp.cmd("human-monitor-command", **{"command-line": line})
    if out.strip():
        raise cprlib.QmpError("%s: %s" % (line, out.strip()))


def main():
    accels = os.environ.get("CPR_BENCH_ACCELS")
    accels = accels.split(",") if accels else \
        ["tcg"] + (["kvm"] if kvm_works() else [])
    print("In-process snapshot restores of a %d MiB guest (harness guest, "
          "guest-triggered)" % MEM)
    print("%-5s %6s %11s %9s %8s %8s %8s %9s" %
          ("accel", "pages", "restores/s", "ms/rest.", "RAM", "CPU",
           "devices", "x loadvm"))
    for accel in accels:
        lv = loadvm_ms(accel)
        rates = cpr_rates(accel)
        for n in PAGES:
            rate, total, ram, cpu, dev = rates[n]
            print("%-5s %6d %11.0f %9.3f %8.3f %8.3f %8.3f %9.0f" %
                  (accel, n, rate, total, ram, cpu, dev, rate * lv / 1e3))
        print("%-5s loadvm of the same guest: %.1f ms per restore (%.1f "
              "restores/s)" % (accel, lv, 1e3 / lv))
    print("ms/rest.: QEMU's time per restore (stop to resume), median; "
          "RAM, CPU, devices: its parts.  restores/s include the guest's "
          "own work of each iteration.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
