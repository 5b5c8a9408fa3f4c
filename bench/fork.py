#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""VM fork (cpr-fork) on the boot-sector guest (RAM in memfds; TCG, and
the latency rows under KVM too where it works):

- fork latency: from the cpr-fork request to a child running (its
  cpr_fork_child_running trace event), for a child started beforehand
  and waiting on the socket (warm) and for one started after the fork
  point (cold: from its start);
- cpr-fork-reset of a child that ran a while, next to cpr-restore (the
  in-process snapshot) in the same child after it ran as long;
- cpr-fork-reset of a paused child after 1, 16, 256 and 4096 of its
  pages were written (written through /proc/PID/mem, which makes the
  same private copies a guest write does), QMP round trip and QEMU's own
  time (trace), next to cpr-restore of an in-process snapshot taken in
  the same paused child (QMP round trip; no page written, as QEMU's
  dirty log does not see /proc/PID/mem writes: its floor);
- memory: Pss of the parent and of each of the children (guest RAM
  written by the parent before the fork is shared), next to as many
  independent VMs that each wrote their RAM.

Environment: CPR_BENCH_ACCELS (tcg,kvm), CPR_BENCH_FORK_MB (guest RAM,
1024), CPR_BENCH_FORK_CHILDREN (children for the memory figure, 16),
CPR_BENCH_FORK_RUNS (5)."""

import os
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "scripts"))
import cprlib  # noqa: E402

MEM = int(os.environ.get("CPR_BENCH_FORK_MB", "1024"))
CHILDREN = int(os.environ.get("CPR_BENCH_FORK_CHILDREN", "16"))
RUNS = int(os.environ.get("CPR_BENCH_FORK_RUNS", "5"))
RUNNING = re.compile(r"^\d+@(\d+\.\d+):cpr_fork_child_running", re.M)
RESET = re.compile(r"cpr_fork_reset (\d+) pages dropped in (\d+) ns, CPUs "
                   r"(\d+) ns, devices (\d+) ns, all (\d+) ns")
PAGES = (1, 16, 256, 4096)


def pss_kb(pid):
    with open("/proc/%d/smaps_rollup" % pid) as f:
        return int(re.search(r"^Pss:\s+(\d+)", f.read(), re.M).group(1))


def trace_time(workdir, timeout=60):
    path = os.path.join(workdir, "trace.log")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                m = RUNNING.search(f.read())
            if m:
                return float(m.group(1))
        except OSError:
            pass
        time.sleep(0.002)
    raise cprlib.QmpError("no child ran (see %s)" % path)


def child_disk(workdir):
    """The child's own copy of the guest's disk (made before timing it)."""
    disk = os.path.join(workdir, "disk.img")
    if not os.path.exists(disk):
        with open(cprlib.GUEST, "rb") as src, open(disk, "wb") as dst:
            dst.write(src.read())
    return disk


def launch_child(channel, workdir, paused=False,
                 trace="cpr_fork_child_running", accel="tcg"):
    """Start a child QEMU by hand (not waiting for its monitor)."""
    disk = child_disk(workdir)
    args = [cprlib.QEMU, "-machine", "q35,memfd-alloc=on", "-accel", accel,
            "-m", str(MEM), "-display", "none",
            "-drive", "file=%s,format=raw" % disk,
            "-serial", "file:" + os.path.join(workdir, "serial.log"),
            "-qmp", "unix:%s,server=on,wait=off" %
            os.path.join(workdir, "qmp.sock"),
            "-incoming", "cpr-fork:" + channel,
            "-d", "trace:" + trace, "-msg", "timestamp=on",
            "-D", os.path.join(workdir, "trace.log")]
    if paused:
        args.append("-S")
    return subprocess.Popen(args)


def new_dir():
    return cprlib.tempfile.mkdtemp(prefix="cpr-fork-",
                                   dir=os.path.join(cprlib.TOP, "build"))


def stop_all(procs):
    for p, d in procs:
        p.kill()
        p.wait()
        subprocess.run(["rm", "-rf", d], check=False)
    procs.clear()


def one_run(warm, cold, resets, restores, accel="tcg"):
    procs = []
    parent = cprlib.Vm(MEM, accel=accel)
    try:
        parent.wait_passes(1)
        channel = "unix:" + os.path.join(parent.dir, "fork.sock")
        wdir = new_dir()
        procs.append((launch_child(channel, wdir, accel=accel), wdir))
        time.sleep(1)           # the warm child is up and waiting
        t0 = time.time()
        parent.qmp.cmd("cpr-fork", channel=channel)
        warm.append(trace_time(wdir) - t0)
        cdir = new_dir()
        child_disk(cdir)
        t0 = time.time()
        c = launch_child(channel, cdir, accel=accel)
        procs.append((c, cdir))
        cold.append(trace_time(cdir) - t0)

        # Reset of a child that ran 0.5 s; in the same child, restore of
        # an in-process snapshot after as long
        q = cprlib.Qmp(os.path.join(cdir, "qmp.sock"), c)
        time.sleep(0.5)
        t0 = time.monotonic()
        q.cmd("cpr-fork-reset")
        resets.append(time.monotonic() - t0)
        q.cmd("cpr-snapshot")
        time.sleep(0.5)
        t0 = time.monotonic()
        q.cmd("cpr-restore")
        restores.append(time.monotonic() - t0)
        q.close()
    finally:
        stop_all(procs)
        parent.kill()


def ram_base(pid):
    """Where the child maps guest RAM below 4 GiB (its pc.ram block)."""
    with open("/proc/%d/maps" % pid) as f:
        for line in f:
            if "memfd:pc.ram" in line:
                return int(line.split("-")[0], 16)
    raise cprlib.QmpError("no pc.ram mapping in process %d" % pid)


def reset_at_pages():
    """{pages: ([QMP s], [QEMU's own ns])} of cpr-fork-reset of a paused
    child after that many of its pages were written; [cpr-restore s]"""
    procs = []
    parent = cprlib.Vm(MEM)
    out = {n: ([], []) for n in PAGES}
    restores = []
    try:
        parent.wait_passes(1)
        parent.qmp.cmd("stop")          # children start paused and stay so
        channel = "unix:" + os.path.join(parent.dir, "fork.sock")
        parent.qmp.cmd("cpr-fork", channel=channel)
        d = new_dir()
        c = launch_child(channel, d, trace="cpr_fork_*")
        procs.append((c, d))
        trace_time(d)
        q = cprlib.Qmp(os.path.join(d, "qmp.sock"), c)
        base = ram_base(c.pid)
        mem = os.open("/proc/%d/mem" % c.pid, os.O_RDWR)
        try:
            for _ in range(RUNS):
                for n in PAGES:
                    for i in range(n):
                        os.pwrite(mem, b"\xa5" * 8,
                                  base + (64 << 20) + i * 4096 + 8)
                    t0 = time.monotonic()
                    q.cmd("cpr-fork-reset")
                    out[n][0].append(time.monotonic() - t0)
        finally:
            os.close(mem)
        with open(os.path.join(d, "trace.log")) as f:
            own = [m for m in RESET.findall(f.read())]
        for i, m in enumerate(own[-RUNS * len(PAGES):]):
            out[PAGES[i % len(PAGES)]][1].append(int(m[4]))
            if int(m[0]) < PAGES[i % len(PAGES)]:
                raise cprlib.QmpError("reset dropped %s pages, %d written" %
                                      (m[0], PAGES[i % len(PAGES)]))
        q.cmd("cpr-snapshot")
        for _ in range(RUNS):
            t0 = time.monotonic()
            q.cmd("cpr-restore")
            restores.append(time.monotonic() - t0)
        q.close()
        return out, restores
    finally:
        stop_all(procs)
        parent.kill()


def vms_pss(n):
    """Pss of @n independent VMs that each wrote all of their RAM."""
    vms = []
    try:
        for _ in range(n):
            vms.append(cprlib.Vm(MEM))
        for vm in vms:
            vm.wait_passes(1, timeout=3600)
        for vm in vms:
            vm.qmp.cmd("stop")
        return [pss_kb(vm.pid) for vm in vms]
    finally:
        for vm in vms:
            vm.kill()


def memory():
    """Pss of a parent that wrote all of its RAM and of paused children."""
    procs = []
    parent = cprlib.Vm(MEM)
    try:
        parent.wait_passes(2)
        channel = "unix:" + os.path.join(parent.dir, "fork.sock")
        parent.qmp.cmd("cpr-fork", channel=channel)
        for _ in range(CHILDREN):
            d = new_dir()
            procs.append((launch_child(channel, d, paused=True), d))
            trace_time(d)
        time.sleep(1)
        return [pss_kb(parent.pid)] + [pss_kb(p.pid) for p, _ in procs]
    finally:
        stop_all(procs)
        parent.kill()


def main():
    accels = cprlib.bench_accels()
    print("VM fork, boot-sector guest, %d MiB, %s; %d runs" %
          (MEM, " and ".join(a.upper() for a in accels), RUNS))
    latency = {}
    for accel in accels:
        latency[accel] = ([], [], [], [])
        for _ in range(RUNS):
            one_run(*latency[accel], accel=accel)
    pss = memory()
    at_pages, restores = reset_at_pages()
    vms = vms_pss(CHILDREN)

    def ms(xs):
        return "%.1f ms (%.1f-%.1f)" % (statistics.median(xs) * 1e3,
                                        min(xs) * 1e3, max(xs) * 1e3)
    print()
    print("| figure | median (min-max) |")
    print("|---|---|")
    for accel, (warm, cold, resets, restores_run) in latency.items():
        a = accel.upper()
        print("| %s: fork, warm child: cpr-fork request -> child running "
              "| %s |" % (a, ms(warm)))
        print("| %s: fork, cold child: child started -> running | %s |" %
              (a, ms(cold)))
        print("| %s: cpr-fork-reset of a child that ran 0.5 s (QMP round "
              "trip) | %s |" % (a, ms(resets)))
        print("| %s: cpr-restore (in-process snapshot) of the same child "
              "after 0.5 s (QMP round trip) | %s |" % (a, ms(restores_run)))
    for n in PAGES:
        print("| TCG: cpr-fork-reset of a paused child after %d pages "
              "written: QMP round trip / QEMU's own | %s / %.2f ms |" %
              (n, ms(at_pages[n][0]),
               statistics.median(at_pages[n][1]) / 1e6))
    print("| TCG: cpr-restore of an in-process snapshot of the same "
          "paused child, no page written (QMP round trip) | %s |" %
          ms(restores))
    print()
    print("Pss with %d paused children of a parent that wrote its %d MiB: "
          "parent %d MiB, children %s MiB, all together %d MiB; %d "
          "independent VMs that each wrote their %d MiB: %s MiB, all "
          "together %d MiB (%.1fx the parent and its children)" %
          (CHILDREN, MEM, pss[0] // 1024,
           "/".join(str(x // 1024) for x in pss[1:]), sum(pss) // 1024,
           CHILDREN, MEM, "/".join(str(x // 1024) for x in vms),
           sum(vms) // 1024, sum(vms) / sum(pss)))


if __name__ == "__main__":
    main()
