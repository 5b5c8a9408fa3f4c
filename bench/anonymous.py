#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Live update (cprsave restart + cprload) of a VM whose guest RAM is
anonymous memory (plain -m, no memfd-alloc: cprsave moves it into
memfds first, while the VM runs), next to the same VM with memfd RAM,
on the boot-sector guest with all of its RAM touched.

Per guest RAM size and number of vCPUs: the pause (STOP in the old
process to RESUME in the new one, QEMU's own events), the time cprsave
took before the VM stopped (the copy into memfds), and the pause's ratio
to the memfd case (target: at most 2x at 1 GiB, issue 13).  Each
anonymous update is the first one of a fresh VM (after it, RAM is in
memfds).  The peak of extra memory is the memfd copy of every touched
page, freed again once the VM runs in the new binary.

Environment: CPR_BENCH_SIZES (GiB, default "1 16"), CPR_BENCH_CPUS
(default "1 4"), CPR_BENCH_RUNS (default 3), CPR_ACCEL (default tcg).
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "scripts"))
import cprlib  # noqa: E402


def one_update(gib, cpus, machine, accel):
    """(pause, time from the cprsave request to STOP) in seconds"""
    vm = cprlib.Vm(gib * 1024, machine=machine, accel=accel,
                   extra=["-smp", str(cpus)])
    try:
        vm.wait_passes(1)           # every page of RAM touched once
        since = len(vm.qmp.events)
        t0 = time.time()
        pause = cprlib.cpr_update(vm)
        stop = vm.qmp.wait_event("STOP", since)
        if vm.status() != "running":
            raise cprlib.QmpError("the VM does not run after the update")
        return pause, stop - t0
    finally:
        vm.kill()


def row(values):
    return "%.1f ms (%.1f-%.1f)" % (statistics.median(values) * 1e3,
                                    min(values) * 1e3, max(values) * 1e3)


def main():
    sizes = [int(s) for s in
             os.environ.get("CPR_BENCH_SIZES", "1 16").split()]
    cpus = [int(c) for c in os.environ.get("CPR_BENCH_CPUS", "1 4").split()]
    runs = int(os.environ.get("CPR_BENCH_RUNS", "3"))
    accel = os.environ.get("CPR_ACCEL", "tcg")

    print("Live update of anonymous guest RAM (moved into memfds by "
          "cprsave) next to memfd RAM, accel %s, %d updates each"
          % (accel, runs))
    print()
    print("| guest RAM | vCPUs | pause, memfd RAM | pause, anonymous RAM "
          "| cprsave before the stop, anonymous | ratio of the pauses |")
    print("|---|---|---|---|---|---|")
    targets = []
    for gib in sizes:
        for n in cpus:
            memfd, anon, move = [], [], []
            for _ in range(runs):
                memfd.append(one_update(gib, n, "q35,memfd-alloc=on",
                                        accel)[0])
                p, m = one_update(gib, n, "q35", accel)
                anon.append(p)
                move.append(m)
            ratio = statistics.median(anon) / statistics.median(memfd)
            print("| %d GiB | %d | %s | %s | %s | %.2fx |"
                  % (gib, n, row(memfd), row(anon), row(move),
                     ratio), flush=True)
            if gib == 1:
                targets.append("target (issue 13): anonymous pause <= 2x "
                               "memfd at 1 GiB, %d vCPUs: %.2fx" % (n, ratio))
    print()
    for t in targets:
        print(t)


if __name__ == "__main__":
    main()
