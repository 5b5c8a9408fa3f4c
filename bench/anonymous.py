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

Then the pause with guest RAM on 2 MiB huge pages, in a memfd
(hugetlb=on) and in a file on hugetlbfs (share=on), next to memfd RAM
on 4 KiB pages, with 1 vCPU (needs root: vm.nr_hugepages, mount); the
pool holds the guest's pages, which is all an update needs.

Environment: CPR_BENCH_SIZES (GiB, default "1 16"), CPR_BENCH_CPUS
(default "1 4"), CPR_BENCH_RUNS (default 3), CPR_ACCEL (default tcg).
"""

import os
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "scripts"))
import cprlib  # noqa: E402


def one_update(gib, cpus, machine, accel, extra=()):
    """(pause, time from the cprsave request to STOP) in seconds"""
    vm = cprlib.Vm(gib * 1024, machine=machine, accel=accel,
                   extra=["-smp", str(cpus)] + list(extra))
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


def mem_gib(field):
    """@field of /proc/meminfo, in GiB"""
    with open("/proc/meminfo") as f:
        return int(re.search(r"^%s:\s+(\d+)" % field, f.read(),
                             re.M).group(1)) / (1 << 20)


def row(values):
    return "%.1f ms (%.1f-%.1f)" % (statistics.median(values) * 1e3,
                                    min(values) * 1e3, max(values) * 1e3)


def huge_pages(n=None):
    """vm.nr_hugepages (2 MiB pages), set to @n first if given"""
    path = "/proc/sys/vm/nr_hugepages"
    if n is not None:
        with open(path, "w") as f:
            f.write("%d\n" % n)
    with open(path) as f:
        return int(f.read())


def huge_rows(gib, accel, runs):
    """Pauses with guest RAM on 2 MiB huge pages, a memfd (hugetlb=on)
    and a file on hugetlbfs, next to memfd RAM on 4 KiB pages.  The
    pool holds the guest's pages (an update needs no more) only while
    a huge-page guest runs."""
    pages = gib * 512
    before = huge_pages()
    mnt = cprlib.tempfile.mkdtemp(prefix="cpr-huge-")
    subprocess.run(["mount", "-t", "hugetlbfs", "-o", "pagesize=2M", "none",
                    mnt], check=True)
    machine = "q35,memfd-alloc=on,memory-backend=mem"
    kinds = (
        ["-object", "memory-backend-memfd,id=mem,size=%dG,hugetlb=on,"
         "hugetlbsize=2M" % gib],
        ["-object", "memory-backend-file,id=mem,size=%dG,mem-path=%s,"
         "share=on" % (gib, os.path.join(mnt, "ram"))],
    )
    try:
        plain, huge = [], ([], [])
        for _ in range(runs):
            plain.append(one_update(gib, 1, "q35,memfd-alloc=on", accel)[0])
            for k, extra in enumerate(kinds):
                # Free and compact memory, so the pool can take that much
                for knob, value in (("drop_caches", "3"),
                                    ("compact_memory", "1")):
                    with open("/proc/sys/vm/" + knob, "w") as f:
                        f.write(value + "\n")
                if huge_pages(before + pages) < before + pages:
                    print("| %d GiB | 1 | not measured: cannot reserve "
                          "%d MiB of huge pages | | |" % (gib, 2 * pages))
                    return
                try:
                    huge[k].append(one_update(gib, 1, machine, accel,
                                              extra)[0])
                finally:
                    if os.path.exists(os.path.join(mnt, "ram")):
                        os.unlink(os.path.join(mnt, "ram"))
                    huge_pages(before)
    finally:
        subprocess.run(["umount", mnt], check=False)
        os.rmdir(mnt)
        huge_pages(before)
    print("| %d GiB | 1 | %s | %s (%.2fx) | %s (%.2fx) |"
          % (gib, row(plain), row(huge[0]),
             statistics.median(huge[0]) / statistics.median(plain),
             row(huge[1]),
             statistics.median(huge[1]) / statistics.median(plain)))


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
            # The copy holds the guest's RAM twice until the pause ends
            if 2 * gib + 1 > mem_gib("MemAvailable"):
                print("| %d GiB | %d | not measured: the guest's RAM and "
                      "its copy are more than this host has available "
                      "| | | |" % (gib, n), flush=True)
                continue
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

    print()
    print("Guest RAM on 2 MiB huge pages, accel %s, %d updates each "
          "(cprsave restart + cprload)" % (accel, runs))
    print()
    print("| guest RAM | vCPUs | pause, memfd RAM (4 KiB pages) "
          "| pause, memfd on huge pages (hugetlb=on) "
          "| pause, file on hugetlbfs (share=on) |")
    print("|---|---|---|---|---|")
    for gib in sizes:
        if gib + 2 <= mem_gib("MemTotal"):
            huge_rows(gib, accel, runs)
        else:
            print("| %d GiB | 1 | not measured: the guest's RAM in huge "
                  "pages is more than this host has | | |" % gib)


if __name__ == "__main__":
    main()
