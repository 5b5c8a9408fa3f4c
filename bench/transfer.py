#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Pause of a live update of the Linux test guest, side by side in one
run: our transfer mode (cprsave transfer to a QEMU started with -incoming
cpr:unix:PATH), our exec mode (cprsave restart with auto-load, and with
relay: two short pauses, given as their sum), and upstream QEMU 10.0's
cpr-transfer (build/upstream, built from Debian trixie's source by
bench/upstream-qemu.sh).

The guest is the Linux test guest alone (no disks, no network), its
heartbeat every millisecond on a unix-socket serial console, main RAM in
a memory-backend-memfd: what upstream's cpr-transfer handles (it keeps no
chardev, tap or QMP connection, so its new process gets its own serial
socket and QMP socket, which the host connects to before the VM resumes
there).  Two figures per update: QMP STOP (old process) to RESUME (new
process), and the largest gap between two heartbeats the host receives;
heartbeats upstream loses or cuts (its new process has a new serial
socket) are counted and reported.
Each kind runs on its own VM, one VM at a time; ours alternate transfer
and exec updates on the same VM.

Environment: CPR_BENCH_SIZES_MB (guest RAM sizes, "1024,16384"),
CPR_BENCH_TRANSFER_RUNS (updates of each kind per size, 10).
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "scripts"))
import cprlib  # noqa: E402
import linuxvm  # noqa: E402

UPSTREAM = os.path.join(cprlib.TOP, "build", "upstream", "obj",
                        "qemu-system-x86_64")
SIZES = [int(x) for x in
         os.environ.get("CPR_BENCH_SIZES_MB", "1024,16384").split(",")]
RUNS = int(os.environ.get("CPR_BENCH_TRANSFER_RUNS", "10"))


def vm_args(binary, mem, d, tag, upstream, wait=False):
    """The guest's command line for QEMU @binary in directory @d; @tag
    names its serial and QMP sockets; @wait: QEMU waits at start-up until
    the host has connected to both."""
    serial = os.path.join(d, "serial-%s.sock" % tag)
    qmp = os.path.join(d, "qmp-%s.sock" % tag)
    args = linuxvm.plain_args(mem, serial, qmp)
    args[0] = binary
    if wait:
        args = [a.replace("wait=off", "wait=on") for a in args]
    args += ["-object", "memory-backend-memfd,id=ram0,size=%dM,share=on" %
             mem, "-machine", "memory-backend=ram0"]
    # The other RAM blocks (ROMs, VGA, ACPI tables) in memfds too
    args += ["-machine", "aux-ram-share=on" if upstream else "memfd-alloc=on"]
    return args, serial, qmp


class Vm:
    """One chain of QEMU processes running the guest."""

    def __init__(self, binary, mem, upstream):
        self.dir = tempfile.mkdtemp(prefix="cpr-bench-",
                                    dir=os.path.join(cprlib.TOP, "build"))
        self.mem = mem
        self.upstream = upstream
        self.state = os.path.join(self.dir, "vm.cpr")
        self.watch = linuxvm.Watch()
        self.args, serial, qmp = vm_args(binary, mem, self.dir, "0",
                                         upstream)
        self.proc = subprocess.Popen(self.args)
        self.pid = self.proc.pid
        self.qmp = cprlib.Qmp(qmp, self.proc)
        self.socks = [linuxvm.attach_serial(self.watch, serial)]
        self.n = 0

    def alive(self):
        return self.proc.poll() is None

    def wait_progress(self, beats=200, timeout=120):
        """Wait for @beats more heartbeats."""
        base = self.watch.snapshot()["hb"]
        deadline = time.monotonic() + timeout
        while self.watch.snapshot()["hb"] < base + beats:
            if not self.alive() or time.monotonic() > deadline:
                raise cprlib.QmpError("no heartbeat from the guest")
            time.sleep(0.01)

    def check(self):
        errs = self.watch.snapshot()["errors"]
        if errs:
            raise cprlib.QmpError("; ".join(errs[:5]))

    def ours_transfer(self):
        sock = os.path.join(self.dir, "cpr.sock")
        new = cprlib.start_incoming(self.args, sock)
        t0 = time.monotonic()
        pause = cprlib.cpr_transfer(self, new, sock)
        self.wait_progress()
        return pause, self.watch.max_gap(t0)

    def ours_exec(self):
        t0 = time.monotonic()
        pause = cprlib.cpr_update(self, auto_load=True)
        self.wait_progress()
        return pause, self.watch.max_gap(t0)

    def ours_relay(self):
        """Both pauses together; the heartbeat gap is the longer one's."""
        t0 = time.monotonic()
        pauses = cprlib.cpr_relay(self)
        self.wait_progress()
        return sum(pauses), self.watch.max_gap(t0), max(pauses)

    def upstream_transfer(self):
        """Upstream's cpr-transfer: the new QEMU with a main and a cpr
        incoming channel; migrate with both channels."""
        self.n += 1
        tag = str(self.n)
        main = os.path.join(self.dir, "main-%s.sock" % tag)
        cpr = os.path.join(self.dir, "cpr-%s.sock" % tag)
        args, serial, qmp = vm_args(UPSTREAM, self.mem, self.dir, tag, True,
                                    wait=True)
        cpr_addr = {"transport": "socket", "type": "unix", "path": cpr}
        main_addr = {"transport": "socket", "type": "unix", "path": main}
        args += ["-incoming", "unix:" + main, "-incoming",
                 json.dumps({"channel-type": "cpr", "addr": cpr_addr})]
        new = subprocess.Popen(args)
        deadline = time.monotonic() + 60
        while not os.path.exists(cpr):
            if new.poll() is not None or time.monotonic() > deadline:
                raise cprlib.QmpError("upstream's new QEMU did not listen")
            time.sleep(0.002)
        t0 = time.monotonic()
        self.qmp.cmd("migrate-set-parameters", mode="cpr-transfer")
        self.qmp.cmd("migrate", channels=[
            {"channel-type": "main", "addr": main_addr},
            {"channel-type": "cpr", "addr": cpr_addr}])
        # The new QEMU waits for the host on its serial and QMP sockets
        self.socks.append(linuxvm.attach_serial(self.watch, serial))
        new_qmp = cprlib.Qmp(qmp, new)
        cprlib.wait_migration(self.qmp)
        stop = self.qmp.event_time("STOP")
        resume = new_qmp.wait_event("RESUME")
        self.qmp.cmd("quit")
        self.proc.wait()
        self.qmp.close()
        self.proc, self.pid, self.qmp = new, new.pid, new_qmp
        self.wait_progress()
        return resume - stop, self.watch.max_gap(t0)

    def kill(self):
        self.qmp.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for s in self.socks:
            s.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def measure(mem):
    """{kind: [(pause, gap), ...]} for guest RAM @mem MiB."""
    out = {"transfer": [], "exec": [], "relay": [], "upstream": []}
    vm = Vm(cprlib.QEMU, mem, False)
    try:
        vm.wait_progress()
        for _ in range(RUNS):
            out["transfer"].append(vm.ours_transfer())
            out["exec"].append(vm.ours_exec())
            out["relay"].append(vm.ours_relay())
        vm.check()
    finally:
        vm.kill()
    vm = Vm(UPSTREAM, mem, True)
    try:
        vm.wait_progress()
        for _ in range(RUNS):
            out["upstream"].append(vm.upstream_transfer())
        # Upstream opens the serial console anew: what the host saw go
        # wrong there is reported, not fatal
        out["upstream errors"] = vm.watch.snapshot()["errors"]
    finally:
        vm.kill()
    return out


def ms(samples, i):
    return statistics.median(s[i] for s in samples) * 1e3


def main():
    if not os.access(UPSTREAM, os.X_OK):
        sys.exit("bench/transfer.py: no %s; run bench/upstream-qemu.sh" %
                 UPSTREAM)
    print("Linux guest alone, TCG, main RAM in a memory-backend-memfd; "
          "medians of %d updates of each kind per size" % RUNS)
    print()
    print("| guest RAM | method | STOP -> RESUME (QMP) | heartbeat gap at "
          "the host | pause vs upstream |")
    print("|---|---|---|---|---|")
    errs = []
    relay_max = []
    for mem in SIZES:
        out = measure(mem)
        relay_max.append((mem, ms(out["relay"], 2)))
        base = ms(out["upstream"], 0)
        for kind, name in (("transfer", "qemu-cpr transfer"),
                           ("exec", "qemu-cpr exec (auto-load)"),
                           ("relay", "qemu-cpr exec (relay), both pauses"),
                           ("upstream", "upstream 10.0 cpr-transfer")):
            s = out[kind]
            print("| %d MiB | %s | %.2f ms (%.2f-%.2f) | %.1f ms (max %.1f) "
                  "| %.2fx |" %
                  (mem, name, ms(s, 0), min(x[0] for x in s) * 1e3,
                   max(x[0] for x in s) * 1e3, ms(s, 1),
                   max(x[1] for x in s) * 1e3, ms(s, 0) / base), flush=True)
        errs.append((mem, out["upstream errors"]))
    print()
    print("exec (relay): the guest pauses twice (relay process, then the "
          "new binary in the same PID); the longer pause alone, median: " +
          ", ".join("%d MiB %.2f ms" % (mem, m) for mem, m in relay_max))
    print()
    for mem, e in errs:
        print("%d MiB, upstream: the host saw %d problems on the serial "
              "console over %d updates%s" %
              (mem, len(e), RUNS, (": " + "; ".join(e[:3])) if e else ""))


if __name__ == "__main__":
    main()
