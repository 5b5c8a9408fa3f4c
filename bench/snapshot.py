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

The same at 16 pages with the doorbell: the host reads each iteration's
end from the cpr-trigger's socket and answers before the restore, as a
fuzzer's loop would; and, side by side at 16 pages (one VM each, all
paused but one, run in turn for several rounds so that a drift in the
machine's speed treats them alike): this path, without kvm-tpr-opt (-global apic-common.vapic=off),
which a fuzzing VM can do without, restores through the main loop
(-global cpr-trigger.restore-in-vcpu=off; under KVM they always are),
and the previous path (that, and -machine cpr-restore-plan=off: each
restore loads the device state stream instead of replaying the plan).

Then the Linux test guest (scripts/linux-guest.sh) of the same size under
TCG, restored with QMP cpr-restore back to back for the same time, and
loadvm of it.

Environment: CPR_BENCH_ACCELS (default: tcg, and kvm if it works),
CPR_BENCH_MEM_MB (1024), CPR_BENCH_SECONDS (per page count, 3),
CPR_BENCH_LOADVM_RUNS (5).
"""

import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "scripts"))
import cprlib  # noqa: E402
import linuxvm  # noqa: E402
from fuzzvm import FuzzVm  # noqa: E402

MEM = int(os.environ.get("CPR_BENCH_MEM_MB", "1024"))
SECONDS = float(os.environ.get("CPR_BENCH_SECONDS", "3"))
LOADVM_RUNS = int(os.environ.get("CPR_BENCH_LOADVM_RUNS", "5"))
PAGES = (1, 16, 256, 4096)
# The TPR patching for old 32-bit Windows guests, on by default: its reset
# and its load each make a round trip to the vCPU thread
NO_VAPIC = ("-global", "apic-common.vapic=off")
# Restores through the main loop, as with several vCPUs or a doorbell
NO_VCPU = ("-global", "cpr-trigger.restore-in-vcpu=off")
# ... and loading the device state stream each time: the previous path
PREVIOUS = NO_VCPU + ("-machine", "cpr-restore-plan=off")
TRACE = re.compile(r"cpr_snapshot_restore (\d+) pages in (\d+) ns, CPUs "
                   r"(\d+) ns, devices (\d+) ns \(reset \d+ ns\), all "
                   r"(\d+) ns")


def window_rate(vm, seconds):
    """Iterations per second of the running @vm over the next @seconds"""
    start, t0 = vm.io()["iterations"], time.monotonic()
    time.sleep(seconds)
    io, t1 = vm.io(), time.monotonic()
    if io["errors"]:
        raise cprlib.QmpError("guest errors: %s" % io)
    return (io["iterations"] - start) / (t1 - t0)


def traced_split(vm, seconds=0.5):
    """The split of the restores of the next @seconds (trace_split): the
    trace event is on only then, as writing it costs a system call per
    restore"""
    pos = os.path.getsize(vm.log)
    vm.qmp.cmd("trace-event-set-state", name="cpr_snapshot_restore",
               enable=True)
    time.sleep(seconds)
    vm.qmp.cmd("trace-event-set-state", name="cpr_snapshot_restore",
               enable=False)
    return trace_split(vm.log, pos)[:4]


def cpr_rates(accel, pages=PAGES, extra=()):
    """{pages: (restores/s, median ms of all, RAM, CPU, devices)}"""
    vm = FuzzVm(accel, pages=pages[0], mem_mb=MEM, fill=True, extra=extra)
    out = {}
    try:
        vm.wait(lambda io: io["iterations"] > 100, timeout=300)
        for n in pages:
            vm.set("pages", n)
            time.sleep(0.5)
            out[n] = [window_rate(vm, SECONDS)] + traced_split(vm)
    finally:
        vm.kill()
    return out


def interleaved_rates(accel, configs, pages=16, rounds=5):
    """The configurations @configs ({name: extra QEMU arguments}) side by
    side: one VM each, all started (one after the other) and paused, then
    @rounds rounds in which each runs alone for SECONDS / 2, so that a
    machine whose speed drifts treats them alike.  {name: [restores/s of
    each round], split of all its rounds as in trace_split}"""
    vms, rates = {}, {}
    try:
        for name, extra in configs.items():
            vms[name] = FuzzVm(accel, pages=pages, mem_mb=MEM, fill=True,
                               extra=extra)
            vms[name].wait(lambda io: io["iterations"] > 100, timeout=300)
            vms[name].qmp.cmd("stop")
            rates[name] = []
        for _ in range(rounds):
            for name, vm in vms.items():
                vm.qmp.cmd("cont")
                time.sleep(0.2)
                rates[name].append(window_rate(vm, SECONDS / 2))
                vm.qmp.cmd("stop")
        splits = {}
        for name, vm in vms.items():
            vm.qmp.cmd("cont")
            splits[name] = traced_split(vm)
            vm.qmp.cmd("stop")
        return {name: (rates[name], splits[name]) for name in configs}
    finally:
        for vm in vms.values():
            vm.kill()


def doorbell_rate(accel, pages=16):
    """Iterations per second of the fuzzer's loop through the doorbell:
    at the end of each iteration the host reads the 8-byte message and
    answers "r", and only then is the snapshot restored."""
    vm = FuzzVm(accel, pages=pages, mem_mb=MEM, fill=True, doorbell=True)
    try:
        vm.bell.settimeout(300)
        n, t0 = 0, None
        while t0 is None or time.monotonic() - t0 < SECONDS:
            if len(vm.bell.recv(8, socket.MSG_WAITALL)) != 8:
                raise cprlib.QmpError("doorbell closed")
            if t0 is None and n == 100:
                n, t0 = 0, time.monotonic()
            n += 1
            vm.bell.sendall(b"r")
        rate = n / (time.monotonic() - t0)
        if vm.io()["errors"]:
            raise cprlib.QmpError("guest errors: %s" % vm.io())
    finally:
        vm.kill()
    return rate


def loadvm_ms(accel):
    """Median time of loadvm of the same guest, in ms."""
    work = tempfile.mkdtemp(prefix="cpr-bench-loadvm-")
    img = os.path.join(work, "state.qcow2")
    subprocess.run([os.path.join(cprlib.TOP, "build", "qemu-img"), "create",
                    "-q", "-f", "qcow2", img, "1G"], check=True)
    vm = FuzzVm(accel, pages=16, mem_mb=MEM, fill=True,
                extra=["-drive", "if=none,id=state,file=%s" % img])
    try:
        vm.wait(lambda io: io["iterations"] > 100, timeout=300)
        vm.qmp.cmd("stop")
        vm.qmp.cmd("cpr-snapshot-drop")
        return savevm_loadvm(vm.qmp)
    finally:
        vm.kill()
        os.unlink(img)
        os.rmdir(work)


def linux_rates():
    """The Linux test guest (scripts/linux-guest.sh: heartbeat every ms,
    memory fill and verify) under TCG, restored over QMP as fast as the
    host can send cpr-restore, then loadvm of the same guest.
    (restores/s, median ms of all, RAM, CPU, devices, median pages),
    loadvm ms."""
    work = tempfile.mkdtemp(prefix="cpr-bench-linux-")
    serial = os.path.join(work, "serial.sock")
    qmp_path = os.path.join(work, "qmp.sock")
    log = os.path.join(work, "trace.log")
    img = os.path.join(work, "state.qcow2")
    subprocess.run([os.path.join(cprlib.TOP, "build", "qemu-img"), "create",
                    "-q", "-f", "qcow2", img, "4G"], check=True)
    proc = subprocess.Popen(linuxvm.plain_args(MEM, serial, qmp_path) + [
        "-drive", "if=none,id=state,file=%s" % img,
        "-trace", "cpr_snapshot_restore", "-D", log])
    try:
        qmp = cprlib.Qmp(qmp_path, proc)
        wait_heartbeat(serial, 100)
        qmp.cmd("cpr-snapshot")
        n, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < SECONDS:
            qmp.cmd("cpr-restore")
            n += 1
        rate = n / (time.monotonic() - t0)
        split = trace_split(log)
        qmp.cmd("cpr-snapshot-drop")
        lv = savevm_loadvm(qmp)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(work)
    return [rate] + split, lv


def trace_split(log, pos=0):
    """Medians of the cpr_snapshot_restore events in @log from @pos on:
    ms of all, RAM, CPU, devices, and pages."""
    with open(log) as f:
        f.seek(pos)
        rows = [tuple(int(x) for x in m.groups())
                for m in TRACE.finditer(f.read())]
    return [statistics.median(r[i] for r in rows) / 1e6
            for i in (4, 1, 2, 3)] + [statistics.median(r[0] for r in rows)]


def savevm_loadvm(qmp):
    """savevm once, then the median time of loadvm, in ms"""
    hmp(qmp, "savevm bench")
    times = []
    for _ in range(LOADVM_RUNS):
        t = time.monotonic()
        hmp(qmp, "loadvm bench")
        times.append((time.monotonic() - t) * 1e3)
    return statistics.median(times)


def wait_heartbeat(path, seq, timeout=120):
    """Wait for heartbeat @seq of the Linux guest on its serial socket,
    then hang up (QEMU drops what the guest writes from then on)."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        while True:
            try:
                sock.connect(path)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        sock.settimeout(timeout)
        buf = b""
        while not re.search(rb"H %d\r?\n" % seq, buf):
            data = sock.recv(65536)
            if not data or time.monotonic() > deadline:
                raise cprlib.QmpError("the Linux guest did not start")
            buf = buf[-64:] + data


def hmp(qmp, line):
    out = qmp.cmd("human-monitor-command", **{"command-line": line})
    if out.strip():
        raise cprlib.QmpError("%s: %s" % (line, out.strip()))


def main():
    accels = cprlib.bench_accels()
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
        print("%-5s with the doorbell (the host answers each iteration), "
              "16 pages: %.0f restores/s" % (accel, doorbell_rate(accel)))
        configs = {"this path": (), "no kvm-tpr-opt": NO_VAPIC,
                   "in the main loop": NO_VCPU, "previous path": PREVIOUS}
        side = interleaved_rates(accel, configs)
        base = side["previous path"][0]
        print("%-5s 16 pages, side by side (%d rounds of %.1f s each, "
              "taken in turn):" % (accel, len(base), SECONDS / 2))
        for name, extra in configs.items():
            runs, (total, ram, cpu, dev) = side[name]
            ratios = [r / b for r, b in zip(runs, base)]
            print("%-5s   %-17s %6.0f restores/s (rounds %.0f-%.0f), x%.2f "
                  "the previous path (rounds x%.2f-x%.2f); %.3f ms per "
                  "restore (RAM %.3f, CPU %.3f, devices %.3f)%s" %
                  (accel, name, statistics.median(runs), min(runs),
                   max(runs), statistics.median(ratios), min(ratios),
                   max(ratios), total, ram, cpu, dev,
                   "  [%s]" % " ".join(extra) if extra else ""))
    if "tcg" in accels:
        (rate, total, ram, cpu, dev, pages), lv = linux_rates()
        print("Linux guest (%d MiB, TCG), restored over QMP back to back: "
              "%.0f restores/s, %.3f ms per restore (RAM %.3f, CPU %.3f, "
              "devices %.3f; %d pages), loadvm %.1f ms (x%.0f)" %
              (MEM, rate, total, ram, cpu, dev, pages, lv, rate * lv / 1e3))
    print("ms/rest.: QEMU's time per restore (stop to resume), median; "
          "RAM, CPU, devices: its parts.  restores/s include the guest's "
          "own work of each iteration.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
