#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""VM fork (cpr-fork) on the boot-sector guest (TCG, RAM in memfds):

- fork latency: from the cpr-fork request to a child running (its
  cpr_fork_child_running trace event), for a child started beforehand
  and waiting on the socket (warm) and for one started after the fork
  point (cold: from its start);
- cpr-fork-reset of a child that ran a while, next to cpr-restore (the
  in-process snapshot) in the same child after it ran as long;
- memory: Pss of the parent and of each of the children (guest RAM
  written by the parent before the fork is shared).

Environment: CPR_BENCH_FORK_MB (guest RAM, 1024), CPR_BENCH_FORK_CHILDREN
(children for the memory figure, 8), CPR_BENCH_FORK_RUNS (5)."""

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
CHILDREN = int(os.environ.get("CPR_BENCH_FORK_CHILDREN", "8"))
RUNS = int(os.environ.get("CPR_BENCH_FORK_RUNS", "5"))
RUNNING = re.compile(r"^\d+@(\d+\.\d+):cpr_fork_child_running", re.M)


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


def launch_child(channel, workdir, paused=False):
    """Start a child QEMU by hand (not waiting for its monitor)."""
    disk = os.path.join(workdir, "disk.img")
    with open(cprlib.GUEST, "rb") as src, open(disk, "wb") as dst:
        dst.write(src.read())
    args = [cprlib.QEMU, "-machine", "q35,memfd-alloc=on", "-accel", "tcg",
            "-m", str(MEM), "-display", "none",
            "-drive", "file=%s,format=raw" % disk,
            "-serial", "file:" + os.path.join(workdir, "serial.log"),
            "-qmp", "unix:%s,server=on,wait=off" %
            os.path.join(workdir, "qmp.sock"),
            "-incoming", "cpr-fork:" + channel,
            "-d", "trace:cpr_fork_child_running", "-msg", "timestamp=on",
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


def one_run(warm, cold, resets, restores):
    procs = []
    parent = cprlib.Vm(MEM)
    try:
        parent.wait_passes(1)
        channel = "unix:" + os.path.join(parent.dir, "fork.sock")
        wdir = new_dir()
        procs.append((launch_child(channel, wdir), wdir))
        time.sleep(1)           # the warm child is up and waiting
        t0 = time.time()
        parent.qmp.cmd("cpr-fork", channel=channel)
        warm.append(trace_time(wdir) - t0)
        cdir = new_dir()
        t0 = time.time()
        c = launch_child(channel, cdir)
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
    print("VM fork, boot-sector guest, %d MiB, TCG; %d runs" % (MEM, RUNS))
    warm, cold, resets, restores = [], [], [], []
    for _ in range(RUNS):
        one_run(warm, cold, resets, restores)
    pss = memory()

    def ms(xs):
        return "%.1f ms (%.1f-%.1f)" % (statistics.median(xs) * 1e3,
                                        min(xs) * 1e3, max(xs) * 1e3)
    print()
    print("| figure | median (min-max) |")
    print("|---|---|")
    print("| fork, warm child: cpr-fork request -> child running | %s |" %
          ms(warm))
    print("| fork, cold child: child started -> running | %s |" % ms(cold))
    print("| cpr-fork-reset of a child that ran 0.5 s (QMP round trip) | %s |"
          % ms(resets))
    print("| cpr-restore (in-process snapshot) of the same child after 0.5 s "
          "(QMP round trip) | %s |" % ms(restores))
    print()
    print("Pss with %d paused children of a parent that wrote its %d MiB: "
          "parent %d MiB, children %s MiB, all together %d MiB" %
          (CHILDREN, MEM, pss[0] // 1024,
           "/".join(str(x // 1024) for x in pss[1:]), sum(pss) // 1024))


if __name__ == "__main__":
    main()
