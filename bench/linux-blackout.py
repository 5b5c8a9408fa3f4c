#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Blackout of the Linux test guest (tap network, raw and qcow2 disks, two
serial consoles, workload running) through a live update with
cprsave/cprload, next to the stock ways in the same run: local migration
to a second QEMU over a unix socket, and migrate to a file + restore.

Two figures per update: QEMU's own view (STOP event in the old process to
RESUME in the new one) and the guest's as the host sees it (largest gap
between two heartbeats arriving on the serial socket; the workload writes
one every millisecond).  Run as root, in a network namespace it makes.

Environment: CPR_BENCH_RUNS (CPR updates, default 10), CPR_BENCH_STOCK_RUNS
(runs of each stock way, default 3), CPR_BENCH_MEM_MB (guest RAM, 1024).
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "scripts"))
import cprlib  # noqa: E402
import linuxvm  # noqa: E402

MEM = int(os.environ.get("CPR_BENCH_MEM_MB", "1024"))


def check(vm):
    errs = vm.watch.snapshot()["errors"]
    if errs:
        raise cprlib.QmpError("; ".join(errs[:5]))


def cpr_runs(runs):
    vm = linuxvm.LinuxVm(mem_mb=MEM)
    try:
        vm.start()
        out = []
        for _ in range(runs):
            out.append(vm.update())
        check(vm)
        return out
    finally:
        vm.kill()


def stock_switch(to_file):
    """The stock ways to move the VM to a new QEMU on this host: stop,
    then migrate to a file, quit and restore in a new QEMU (@to_file), or
    migrate over a unix socket to a QEMU started beforehand on another tap;
    then continue.  Disk images are shared.  The VM is stopped first
    because live (pre-copy) migration of this guest under TCG leaves it
    hung on the destination, with Debian's own QEMU 7.2 as well as ours."""
    src = linuxvm.LinuxVm(mem_mb=MEM)
    dst = None
    try:
        src.start()
        uri = "unix:" + os.path.join(src.dir, "mig.sock")
        dst_args = dict(mem_mb=MEM, name="dst", workdir=src.dir,
                        watch=src.watch, incoming="defer")
        if to_file:
            path = os.path.join(src.dir, "vm.mig")
            uri = "exec:cat > " + path
        else:
            dst = linuxvm.LinuxVm(tap="cprtap9", **dst_args)
            dst.qmp.cmd("migrate-incoming", uri=uri)
        src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
        t0 = time.monotonic()
        src.qmp.cmd("stop")
        src.qmp.cmd("migrate", uri=uri)
        cprlib.wait_migration(src.qmp)
        stop = src.qmp.event_time("STOP")
        if to_file:
            src.qmp.cmd("quit")
            src.proc.wait()
            dst = linuxvm.LinuxVm(**dst_args)
            dst.qmp.cmd("migrate-incoming", uri="exec:cat " + path)
        cprlib.wait_migration(dst.qmp)
        dst.qmp.cmd("cont")
        resume = dst.qmp.event_time("RESUME")
        dst.wait_progress()
        check(dst)
        return resume - stop, src.watch.max_gap(t0)
    finally:
        src.kill(remove=False)
        if dst:
            dst.kill()


def row(name, samples, base=None):
    qmp = statistics.median(s[0] for s in samples) * 1e3
    gap = statistics.median(s[1] for s in samples) * 1e3
    worst = max(s[1] for s in samples) * 1e3
    ratio = "" if base is None else "%.0fx" % (gap / base)
    print("| %s | %.1f ms | %.1f ms (max %.1f) | %s |" %
          (name, qmp, gap, worst, ratio), flush=True)
    return gap


def main():
    linuxvm.in_netns("cpr-bench")
    runs = int(os.environ.get("CPR_BENCH_RUNS", "10"))
    stock = int(os.environ.get("CPR_BENCH_STOCK_RUNS", "3"))
    print("Linux guest, %d MiB, TCG, tap + raw + qcow2 + 2 serial consoles;"
          " medians of %d CPR updates and %d runs of each stock way" %
          (MEM, runs, stock))
    print()
    print("| method | STOP -> RESUME (QMP) | heartbeat gap at the host "
          "| gap vs CPR |")
    print("|---|---|---|---|")
    base = row("cprsave/cprload", cpr_runs(runs))
    row("stop + local migration (unix socket) + cont",
        [stock_switch(False) for _ in range(stock)], base)
    row("migrate to file + restore",
        [stock_switch(True) for _ in range(stock)], base)


if __name__ == "__main__":
    main()
