#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Reboot mode: save and restore time and throughput of cprsave/cprload
with mode reboot, next to the raw bandwidth of the same disk (dd with
O_DIRECT, measured in the same run) and next to the stock way (stop,
migrate to a file, quit, new QEMU with -incoming, restore).

For each size the boot-sector guest first writes all of its RAM.  The
"half zero" case then punches out the upper half of guest RAM (a memfd
backend, the VM paused), so that half of the pages are zero: they must
cost no I/O.  Between save and restore the page cache is dropped, as a
host reboot would.

The disk's raw bandwidth is measured for each size with four dd
processes at once (cprsave and cprload use four threads), writing (data
from `yes`: this disk writes zeros faster) and then reading as much as
the guest has RAM, with O_DIRECT and 16 MiB blocks.

Save: cprsave's QMP round trip (stop, device state, RAM written, fsync
of file and directory).  Restore: cprload's QMP round trip in a fresh
QEMU started with -incoming defer.  Throughput: bytes of RAM in the file
(allocated blocks) over that time.

The disk's bandwidth varies from run to run on the build machine (a
VM), so each state file is loaded CPR_BENCH_LOADS times (default 3),
each time in a fresh QEMU right after a raw read of the disk: the table
gives the median load time, and the load's ratio to the raw read just
before it (median of the pairs).

Environment: CPR_BENCH_SIZES (GiB, default "1 4 16"), CPR_ACCEL (tcg),
CPR_BENCH_DIR (a directory on the disk to measure, default /var/tmp),
CPR_BENCH_LOADS (loads per state file, default 3).
"""

import ctypes
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "scripts"))
import cprlib  # noqa: E402

FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long,
                           ctypes.c_long]


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


class RawDisk:
    """The raw bandwidth of @tmpdir's disk with O_DIRECT: @streams dd
    processes at once over @mib MiB in all.  Writing is measured once, at
    creation; read() measures reading the same files again."""

    def __init__(self, tmpdir, mib, streams):
        self.mib = mib
        self.paths = [os.path.join(tmpdir, "cpr-bench-dd.%d" % i)
                      for i in range(streams)]
        self.count = "count=%d" % (mib // 16 // streams)
        # Written data is not zero (`yes`): zeros go faster to this disk
        self.write = self._run(True)

    def _run(self, write):
        drop_caches()
        t0 = time.monotonic()
        procs = []
        for p in self.paths:
            if write:
                yes = subprocess.Popen(["yes"], stdout=subprocess.PIPE)
                procs.append(subprocess.Popen(
                    ["dd", "bs=16M", self.count, "status=none", "of=" + p,
                     "iflag=fullblock", "oflag=direct", "conv=fsync"],
                    stdin=yes.stdout))
                yes.stdout.close()
            else:
                procs.append(subprocess.Popen(
                    ["dd", "bs=16M", self.count, "status=none", "if=" + p,
                     "of=/dev/null", "iflag=direct"]))
        if any(p.wait() for p in procs):
            raise OSError("dd failed")
        return self.mib * (1 << 20) / (time.monotonic() - t0)

    def read(self):
        return self._run(False)

    def remove(self):
        for p in self.paths:
            if os.path.exists(p):
                os.unlink(p)


def punch_upper_half(vm, gib):
    """Make the upper half of guest RAM zero (holes in its memfd)."""
    size = gib << 30
    for name in os.listdir("/proc/%d/fd" % vm.pid):
        link = os.readlink("/proc/%d/fd/%s" % (vm.pid, name))
        if link.startswith("/memfd:mem"):
            fd = os.open("/proc/%d/fd/%s" % (vm.pid, name), os.O_RDWR)
            try:
                if libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE |
                                  FALLOC_FL_KEEP_SIZE, size // 2,
                                  size // 2) < 0:
                    raise OSError(ctypes.get_errno(), "fallocate")
            finally:
                os.close(fd)
            return
    raise cprlib.QmpError("guest RAM memfd not found")


def timed(qmp, cmd, **args):
    t0 = time.monotonic()
    qmp.cmd(cmd, **args)
    return time.monotonic() - t0


def reboot_round_trip(gib, accel, tmpdir, half_zero, raw, loads):
    """Save once, then load @loads times, each in a fresh QEMU right after
    a raw read of the disk.  Returns (save s, [(load s, raw read B/s)],
    bytes of RAM in the file)."""
    mem = ["-object", "memory-backend-memfd,id=mem,size=%dG" % gib,
           "-machine", "memory-backend=mem"]
    path = os.path.join(tmpdir, "cpr-bench-reboot.cpr")
    old = cprlib.Vm(gib * 1024, machine="q35", accel=accel, extra=mem)
    try:
        old.wait_passes(1)          # every page of RAM written
        if half_zero:
            old.qmp.cmd("stop")
            punch_upper_half(old, gib)
        save = timed(old.qmp, "cprsave", file=path, mode="reboot")
        ram = os.stat(path).st_blocks * 512
        old.qmp.cmd("quit")
        old.proc.wait()
        pairs = []
        for i in range(loads):
            read_bw = raw.read()
            drop_caches()
            new = cprlib.Vm(gib * 1024, machine="q35", accel=accel,
                            extra=mem, incoming="defer")
            try:
                load = timed(new.qmp, "cprload", file=path)
                want = "paused" if half_zero else "running"
                if new.status() != want:
                    raise cprlib.QmpError("restored VM is %s" % new.status())
                if not half_zero and not i:
                    new.wait_passes(1)
            finally:
                new.kill()
            pairs.append((load, read_bw))
        return save, pairs, ram
    finally:
        if os.path.exists(path):
            os.unlink(path)
        old.kill()


def stock(gib, accel, tmpdir):
    """(save s, restore s) of migrate to a file and -incoming restore"""
    path = os.path.join(tmpdir, "cpr-bench-stock.mig")
    old = cprlib.Vm(gib * 1024, machine="q35", accel=accel)
    new = None
    try:
        old.wait_passes(1)
        old.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
        old.qmp.cmd("stop")
        t0 = time.monotonic()
        old.qmp.cmd("migrate", uri="exec:cat > " + path)
        cprlib.wait_migration(old.qmp)
        os.sync()
        save = time.monotonic() - t0
        old.qmp.cmd("quit")
        old.proc.wait()
        drop_caches()
        new = cprlib.Vm(gib * 1024, machine="q35", accel=accel,
                        incoming="defer", workdir=old.dir)
        t0 = time.monotonic()
        new.qmp.cmd("migrate-incoming", uri="exec:cat " + path)
        cprlib.wait_migration(new.qmp)
        load = time.monotonic() - t0
        return save, load
    finally:
        if os.path.exists(path):
            os.unlink(path)
        (new or old).kill()


def main():
    sizes = [int(s) for s in
             os.environ.get("CPR_BENCH_SIZES", "1 4 16").split()]
    accel = os.environ.get("CPR_ACCEL", "tcg")
    tmpdir = os.environ.get("CPR_BENCH_DIR", "/var/tmp")
    loads = int(os.environ.get("CPR_BENCH_LOADS", "3"))

    print("Reboot mode, accel %s, files in %s" % (accel, tmpdir))
    print()
    print("| guest RAM | RAM | cprsave | cprload, median (each) "
          "| save MB/s (x raw) | load MB/s (x raw) | RAM in file "
          "| raw write / read MB/s "
          "| migrate to file / restore |")
    print("|---|---|---|---|---|---|---|---|---|")
    for gib in sizes:
        ss, sl = stock(gib, accel, tmpdir)
        # The disk's bandwidth over as much data as the guest has
        raw = RawDisk(tmpdir, gib * 1024, 4)
        try:
            for half in (False, True):
                save, pairs, ram = reboot_round_trip(gib, accel, tmpdir, half,
                                                     raw, loads)
                load = statistics.median(p[0] for p in pairs)
                read_bw = statistics.median(p[1] for p in pairs)
                # Each load against the raw read just before it
                ratio = statistics.median(ram / p[0] / p[1] for p in pairs)
                print("| %d GiB | %s | %.2f s | %.2f s (%s) | %.0f (%.2fx) "
                      "| %.0f (%.2fx) | %.2f GiB | %.0f / %.0f "
                      "| %.2f s / %.2f s |"
                      % (gib, "half zero" if half else "all written",
                         save, load, ", ".join("%.2f" % p[0] for p in pairs),
                         ram / save / 1e6, ram / save / raw.write,
                         ram / load / 1e6, ratio, ram / (1 << 30),
                         raw.write / 1e6, read_bw / 1e6, ss, sl), flush=True)
        finally:
            raw.remove()

if __name__ == "__main__":
    main()
