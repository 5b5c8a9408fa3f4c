#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""In-process snapshot and restore (fuzzing): cpr-snapshot, cpr-restore,
cpr-snapshot-drop over QMP, and the cpr-trigger device driven by the
harness guest tests/guest/fuzz-guest.c, with its input/output memory
excluded from restores and the host's doorbell.  Prints TAP.

CPR_TEST_ACCEL (tcg,kvm) picks the accelerators of the cases that run
under both; the Linux guest runs under TCG only."""

import hashlib
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "..", "scripts"))
import cprlib  # noqa: E402
import linuxvm  # noqa: E402
from fuzzvm import FuzzVm, IO_MAGIC  # noqa: E402

TOP = cprlib.TOP
ACCELS = os.environ.get("CPR_TEST_ACCEL", "tcg").split(",")
LINUX_RESTORES = int(os.environ.get("CPR_SNAP_LINUX_RESTORES", "2000"))

results = []


def diag(msg):
    print("# " + msg, flush=True)


def case(fn):
    results.append(fn)
    return fn


def ram_hash(vm, mem_mb):
    path = os.path.join(vm.dir, "ram")
    vm.qmp.cmd("pmemsave", val=0, size=mem_mb << 20, filename=path)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    os.unlink(path)
    return digest


def snapshot_after_passes(vm, mem):
    """Let cpr-guest run two passes, snapshot it paused and resume it;
    the hash of its RAM at the snapshot."""
    vm.wait_passes(2)
    vm.qmp.cmd("stop")
    before = ram_hash(vm, mem)
    vm.qmp.cmd("cpr-snapshot")
    vm.qmp.cmd("cont")
    return before


def qmp_error(qmp, name, **args):
    """The error of a command expected to fail; "" if it did not."""
    try:
        qmp.cmd(name, **args)
    except cprlib.QmpError as e:
        return str(e)
    return ""


def accel_cases(fn):
    """Run @fn once per accelerator."""
    for accel in ACCELS:
        results.append(lambda a=accel: fn(a))
    return fn


@accel_cases
def host_trigger(accel):
    """cpr-guest changes every page of RAM without end; it is restored
    20 times from QMP, running a whole pass in between, half of the times
    while running, half while paused.  After each paused restore the
    device and CPU state saved again equals the snapshot's (saving a
    running VM reads clocks that moved on); at the end guest RAM hashes as
    at the snapshot."""
    mem = 256
    vm = cprlib.Vm(mem, machine="q35", accel=accel,
                   extra=["-rtc", "clock=vm"])
    try:
        before = snapshot_after_passes(vm, mem)
        pages = []
        for i in range(20):
            vm.wait_passes(2)           # at least one whole pass
            if i % 2:
                vm.qmp.cmd("stop")
                vm.qmp.cmd("cpr-restore", verify=True)
                vm.qmp.cmd("cont")
            else:
                vm.qmp.cmd("cpr-restore")
            info = vm.qmp.cmd("query-cpr")["snapshot"]
            pages.append(info["last-restore-pages"])
            if vm.status() != "running":
                raise cprlib.QmpError("VM %s after a restore" % vm.status())
        vm.wait_passes(1)
        vm.qmp.cmd("stop")
        changed = ram_hash(vm, mem) != before
        vm.qmp.cmd("cpr-restore", verify=True)
        after = ram_hash(vm, mem)
        info = vm.qmp.cmd("query-cpr")["snapshot"]
        diag("%s: 21 restores, pages copied back each time: %d..%d; "
             "snapshot holds %d bytes of RAM, %d of device state" %
             (accel, min(pages), max(pages), info["ram-bytes"],
              info["device-bytes"]))
        return (changed and after == before and info["restores"] == 21 and
                min(pages) > (mem << 20) // 4096 // 2,
                "%s: host-triggered restores bring RAM, devices and CPU "
                "back to the snapshot" % accel)
    finally:
        vm.kill()


@accel_cases
def restore_plan(accel):
    """The restore plan (cpr-restore-plan.c): cpr-guest with a virtio
    device (its state loads through a getter that is more than a copy)
    and a USB keyboard is restored 10 times while paused with
    compare-paths and verify: restoring from the stream and replaying
    the plan (and, under TCG, the machine reset it recorded) give the
    same device and CPU state, equal to the snapshot's, and RAM is the
    snapshot's, though replays leave out the reset of the devices whose
    whole state the load puts back (the PIT among them).  query-cpr
    reports the plan.  With the
    machine property cpr-restore-plan off, compare-paths is refused.
    Once the keyboard is unplugged, the plan (which points into its
    state) is not replayed: the restore of the running VM fails (loading
    the stream finds no keyboard), the VM is left paused with a STOP
    event; a new snapshot restores again.  Restores of the running VM
    send no STOP or RESUME events."""
    mem = 256
    vm = cprlib.Vm(mem, machine="q35", accel=accel,
                   extra=["-rtc", "clock=vm", "-device", "virtio-rng-pci",
                          "-device", "qemu-xhci", "-device",
                          "usb-kbd,id=kbd"])
    try:
        before = snapshot_after_passes(vm, mem)
        plans = []
        since = len(vm.qmp.events)
        for i in range(10):
            vm.wait_passes(1)
            vm.qmp.cmd("stop")
            vm.qmp.cmd("cpr-restore", verify=True, **{"compare-paths": True})
            vm.qmp.cmd("cont")
            vm.qmp.cmd("cpr-restore")
            plans.append(vm.qmp.cmd("query-cpr")["snapshot"].get("plan"))
        # Only those of stop and cont: a restore pauses without events
        events = [e for e, _ in vm.qmp.events[since:]
                  if e in ("STOP", "RESUME")]
        vm.qmp.cmd("stop")
        vm.qmp.cmd("cpr-restore", verify=True)
        same_ram = ram_hash(vm, mem) == before
        plan = plans[-1]
        diag("%s: plan %s" % (accel, plan))
        vm.qmp.cmd("qom-set", path="/machine", property="cpr-restore-plan",
                   value=False)
        off = qmp_error(vm.qmp, "cpr-restore", **{"compare-paths": True})
        vm.qmp.cmd("qom-set", path="/machine", property="cpr-restore-plan",
                   value=True)
        vm.qmp.cmd("cpr-restore")
        vm.qmp.cmd("cont")
        vm.qmp.cmd("device_del", id="kbd")
        since = len(vm.qmp.events)
        gone = qmp_error(vm.qmp, "cpr-restore")
        status = vm.status()
        # A restore that fails leaves the VM paused, and says so
        stopped = [e for e, _ in vm.qmp.events[since:] if e == "STOP"]
        # A new snapshot of the machine as it is now: a new plan
        vm.qmp.cmd("cpr-snapshot")
        vm.qmp.cmd("cpr-restore", verify=True, **{"compare-paths": True})
        vm.qmp.cmd("cont")
        vm.wait_passes(1)
        diag("%s: plans off: %s; keyboard unplugged: %s (VM %s); events "
             "%s, then %s" % (accel, off, gone, status, events, stopped))
        return (same_ram and all(p == plan for p in plans) and
                plan["hooks"] > 0 and plan["copies"] > 0 and
                # TCG: the machine reset is replayed too
                (plan["reset-steps"] > 0) == (accel == "tcg") and
                # ... but not the steps the load makes redundant
                ("isa-pit" in plan["reset-left-out"]) == (accel == "tcg") and
                plan["getters"] > 0 and "cpr-restore-plan" in off and
                "cannot load device state" in gone and
                status in ("paused", "restore-vm") and events == ["STOP", "RESUME"] * 10 and stopped == ["STOP"],
                "%s: restores replaying the plan give the state loading "
                "the stream gives; an unplugged device stops the plan" %
                accel)
    finally:
        vm.kill()


@accel_cases
def guest_trigger(accel, in_vcpu=True):
    """The harness guest snapshots itself and asks for a restore at the
    end of each iteration; each iteration checks that it starts from the
    snapshot (status RESTORED, RAM as at the snapshot).  Its counters live
    in the excluded memory: they go on across restores, and the host
    changes the number of pages to dirty as it runs.  Under TCG (one
    vCPU, no doorbell) the restores are done in the vCPU's thread, which
    the device counts; with restore-in-vcpu=off, and under KVM, none
    are.  Under TCG a restore wakes the main loop at most when a timer
    it restored expires before the main loop's poll would end (neither
    the in-vCPU restore nor the main loop's own should, with this guest):
    counted with the trace event of the end of a restore's notifications
    held back."""
    extra = [] if in_vcpu else ["-global", "cpr-trigger.restore-in-vcpu=off"]
    vm = FuzzVm(accel, pages=16, extra=extra,
                trace=["qemu_notify_event_resume"])
    try:
        vm.wait(lambda io: io["iterations"] >= 2000, timeout=300)
        vm.set("pages", 300)
        # The guest increments the counter with a load and a store: a
        # host write in between is lost, so write until it is seen.
        for _ in range(100):
            vm.set("iterations", 100000)
            time.sleep(0.05)
            if vm.io()["iterations"] >= 100000:
                break
        before = vm.io()
        # (the guest may be some iterations past 100000 already)
        io = vm.wait(lambda io: io["iterations"] >=
                     before["iterations"] + 2000)
        ran = io["iterations"] - before["iterations"]
        info = vm.snapshot_info()
        here = vm.qmp.cmd("qom-get", path="/machine/peripheral/trigger",
                          property="restores-in-vcpu")
        diag("%s: %s; %d iterations and %d restores since %s; last restore "
             "copied %d pages; %d restores in the vCPU's thread" %
             (accel, io, ran, io["restored"] - before["restored"], before,
              info["last-restore-pages"], here))
        if in_vcpu and accel == "tcg":
            # all but the first few, made before the guest's checks start
            in_thread = here >= io["restored"] - 2
        else:
            in_thread = here == 0
        vm.qmp.cmd("stop")
        with open(vm.log) as f:
            ends = re.findall(r"qemu_notify_event_resume .* notified (\d)",
                              f.read())
        woken = ends.count("1")
        diag("%s: %d restores held back notifications; %d then woke the "
             "main loop" % (accel, len(ends), woken))
        quiet = accel != "tcg" or (len(ends) >= io["restored"] - 2 and
                                   woken <= len(ends) // 20)
        ok = (io["magic"] == IO_MAGIC and io["errors"] == 0 and
              # each iteration starts restored (one may be in flight)
              abs(io["restored"] - before["restored"] - ran) <= 1 and
              ran >= 1900 and io["restored"] >= 3900 and
              io["last_status"] == 2 and
              info["restores"] >= io["restored"] and
              # the 300 pages, and the harness's stack, data and routine;
              # ROMs rewritten by the reset would add 34 more
              300 < info["last-restore-pages"] < 320 and
              info["excluded"] == ["io"] and in_thread and quiet)
        return ok, ("%s%s: guest-triggered snapshot and thousands of "
                    "restores; the excluded memory keeps what the host "
                    "writes" % (accel, "" if in_vcpu else
                                " (restore-in-vcpu=off)"))
    finally:
        vm.kill()


# The restores through the main loop
results.append(lambda: guest_trigger("tcg", in_vcpu=False))


@case
def memory_map():
    """A restore maps the memory regions a reset unmaps and the load maps
    again in one transaction, which renders no address space when every
    region is back where it was (counted with its trace event).  When
    the map changed after the snapshot, it is rendered: the host turns
    the cpr-trigger's memory decoding off through the PCI configuration
    ports, restores, and the guest goes on asking for restores through
    the BAR that is mapped again."""
    vm = FuzzVm("tcg", pages=16,
                trace=["memory_region_transaction_all_back"])
    hmp = vm.qmp.hmp
    try:
        vm.wait(lambda io: io["iterations"] >= 1000, timeout=300)
        restored = vm.io()["restored"]
        with open(vm.log) as f:
            quiet = len(f.read().splitlines())
        dev = [d for bus in vm.qmp.cmd("query-pci") for d in bus["devices"]
               if d.get("qdev_id") == "trigger"][0]
        command = 0x80000000 | (dev["bus"] << 16) | (dev["slot"] << 11) | \
            (dev["function"] << 8) | 0x04
        vm.qmp.cmd("stop")
        hmp("o /w 0xcf8 0x%x" % command)        # 32 bits
        hmp("o /h 0xcfc 0")                     # 16 bits
        # The guest's next write to the trigger would go nowhere
        off = "cpr-trigger-mmio" not in hmp("info mtree -f")
        vm.qmp.cmd("cpr-restore")
        mapped = "cpr-trigger-mmio" in hmp("info mtree -f")
        vm.qmp.cmd("cont")
        io = vm.wait(lambda io: io["restored"] >= restored + 1000 or
                     io["errors"])
        diag("%s; %d restores rendered nothing of %d; trigger unmapped %s, "
             "mapped again %s" % (io, quiet, restored, off, mapped))
        return (io["errors"] == 0 and quiet >= restored - 2 and off and
                mapped, "a restore renders the memory map only when it "
                "changed since the last rendering")
    finally:
        vm.kill()


# KVM's dirty ring instead of its dirty bitmap
if "kvm" in ACCELS:
    results.append(lambda: guest_trigger("kvm,dirty-ring-size=4096"))


@case
def doorbell():
    """With the doorbell, each restore request reaches the host (done +
    RESULT) and waits for it; the host writes the next input (pages to
    dirty) and rings back."""
    vm = FuzzVm("tcg", pages=4, doorbell=True)
    try:
        vm.bell.settimeout(120)
        bad = 0
        for i in range(300):
            msg = b""
            while len(msg) < 8:
                chunk = vm.bell.recv(8 - len(msg))
                if not chunk:
                    raise cprlib.QmpError("doorbell closed")
                msg += chunk
            event, result = struct.unpack("<II", msg)
            io = vm.io()
            if event != 1 or result != io["iterations"] or \
                    io["iterations"] != i + 1:
                bad += 1
            vm.set("pages", 1 + i % 64)
            vm.bell.sendall(b"r")
        io = vm.wait(lambda io: io["iterations"] >= 301)
        info = vm.snapshot_info()
        diag("doorbell: %s, %d restores, %d bad messages" %
             (io, info["restores"], bad))
        return (bad == 0 and io["errors"] == 0 and info["restores"] == 300,
                "doorbell: the host learns each iteration's end, writes the "
                "next input and lets the guest go on")
    finally:
        vm.kill()


def refused(vm, cmd, expect, **args):
    try:
        vm.qmp.cmd(cmd, **args)
    except cprlib.QmpError as e:
        if expect in str(e):
            return True
        diag("%s: %s" % (cmd, e))
        return False
    diag("%s succeeded" % cmd)
    return False


@case
def bad_requests():
    """Refusals name the problem and leave the VM running."""
    vm = FuzzVm("tcg", machine="q35,memfd-alloc=on", extra=[
        "-object", "memory-backend-ram,id=priv,size=1M",
        "-device", "ivshmem-plain,memdev=priv,master=on",
        "-object", "memory-backend-ram,id=unused,size=1M"])
    ok = True
    try:
        vm.wait(lambda io: io["iterations"] >= 10)
        vm.qmp.cmd("cpr-snapshot-drop")
        ok &= refused(vm, "cpr-restore", "there is no CPR snapshot")
        ok &= refused(vm, "cpr-snapshot-drop", "there is no CPR snapshot")
        ok &= refused(vm, "cpr-snapshot",
                      "'nope' is neither a memory backend nor a device",
                      exclude=["nope"])
        ok &= refused(vm, "cpr-snapshot", "'priv' is not shared",
                      exclude=["priv"])
        ok &= refused(vm, "cpr-snapshot", "'unused' is not in use",
                      exclude=["unused"])
        ok &= vm.snapshot_info() is None
        vm.qmp.cmd("cpr-snapshot", exclude=["io"])
        ok &= refused(vm, "migrate", "a CPR snapshot exists",
                      uri="exec:cat >/dev/null")
        ok &= refused(vm, "cprsave", "a CPR snapshot exists",
                      file=os.path.join(vm.dir, "vm.cpr"), mode="restart")
        ok &= vm.qmp.cmd("query-status")["status"] == "running"
        # A block node in a format that cannot migrate blocks a new
        # snapshot; the one there is stays and still restores.
        vdi = os.path.join(vm.dir, "disk.vdi")
        subprocess.run([os.path.join(TOP, "build", "qemu-img"),
                        "create", "-q", "-f", "vdi", vdi, "1M"], check=True)
        vm.qmp.cmd("blockdev-add", driver="vdi", **{"node-name": "vdi0"},
                   file={"driver": "file", "filename": vdi})
        ok &= refused(vm, "cpr-snapshot", "cannot snapshot: The vdi format")
        before = vm.snapshot_info()
        ok &= before is not None
        if before:
            vm.qmp.cmd("cpr-restore")
            ok &= vm.snapshot_info()["restores"] == before["restores"] + 1
        vm.qmp.cmd("blockdev-del", **{"node-name": "vdi0"})
        vm.qmp.cmd("cpr-snapshot", exclude=["io"])
        vm.qmp.cmd("cpr-snapshot-drop")
        ok &= vm.snapshot_info() is None
    finally:
        vm.kill()
    # A process started by cprsave, waiting for cprload
    vm = cprlib.Vm(64)
    try:
        vm.wait_passes(1)
        vm.qmp.cmd("cprsave", file=vm.state, mode="restart")
        ok &= refused(vm, "cpr-snapshot", "the VM waits for cprload")
        ok &= refused(vm, "cpr-restore", "there is no CPR snapshot")
        vm.qmp.cmd("cprload", file=vm.state)
        vm.wait_passes(1)
    finally:
        vm.kill()
    return ok, ("bad requests (no snapshot, bad exclusions, migration or "
                "cprsave with a snapshot, a snapshot blocked by a device, "
                "snapshot before cprload) are refused and the VM runs on")


@case
def hmp():
    """The human monitor commands do the same."""
    vm = FuzzVm("tcg", trigger=False)
    run = vm.qmp.hmp
    try:
        vm.wait(lambda io: io["magic"] == 0 and io["pages"] == 16)
        out = [run("cpr_snapshot io"), run("cpr_restore"),
               run("cpr_restore"), run("info cpr")]
        info = vm.snapshot_info()
        ok = (out[:3] == ["", "", ""] and "snapshot: " in out[3] and
              "excluded: io" in out[3] and "restores: 2," in out[3] and
              info["restores"] == 2)
        out += [run("cpr_snapshot_drop"), run("cpr_restore"),
                run("info cpr")]
        ok &= (out[4] == "" and "there is no CPR snapshot" in out[5] and
               "snapshot: none" in out[6])
        if not ok:
            diag("hmp: %s" % out)
        return ok, ("HMP: cpr_snapshot, cpr_restore, cpr_snapshot_drop, "
                    "info cpr")
    finally:
        vm.kill()


class Heartbeat:
    """The Linux guest's heartbeat ("H <seq>") on a unix-socket serial
    port; lines garbled by a restore (the UART goes back too) are
    skipped."""

    def __init__(self, path):
        self.lock = threading.Lock()
        self.last = -1
        self.candidate = None   # a heartbeat that may be a restart
        self.restarts = []      # where the sequence went back to
        self.errors = []
        self.cpus = set()       # CPUs whose own heartbeat ("C") came
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.sock.connect(path)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        threading.Thread(target=self.reader, daemon=True).start()

    def reader(self):
        buf = b""
        while True:
            data = self.sock.recv(65536)
            if not data:
                return
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                m = re.fullmatch(rb"H (\d+)\r?", line)
                c = re.fullmatch(rb"C (\d+) \d+\r?", line)
                with self.lock:
                    if m:
                        self.on_heartbeat(int(m.group(1)))
                    elif c:
                        self.cpus.add(int(c.group(1)))
                    elif line.startswith(b"E "):
                        self.errors.append(line.decode(errors="replace"))

    def on_heartbeat(self, seq):
        """A restart is a heartbeat below the last one that the next one
        follows.  After a restore the serial port's FIFO sends again what
        it held at the snapshot, into a line the host may have half of:
        such a garbled line is not followed by its successor, and is
        dropped."""
        if self.candidate is not None:
            cand, self.candidate = self.candidate, None
            if seq == cand + 1:
                self.restarts.append(cand)
                self.last = seq
                return
        if self.last < 0 or seq == self.last + 1:
            self.last = seq
        elif seq <= self.last:
            self.candidate = seq

    def seq(self):
        with self.lock:
            return self.last

    def wait_restart(self, n, timeout=60):
        """Wait for the @n-th time the sequence goes back; where to."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if len(self.restarts) >= n:
                    return self.restarts[n - 1]
            if time.monotonic() > deadline:
                raise cprlib.QmpError("heartbeat did not go back (last %d)"
                                      % self.seq())
            time.sleep(0.0005)

    def wait(self, cond, timeout=60):
        deadline = time.monotonic() + timeout
        while not cond(self.seq()):
            if time.monotonic() > deadline:
                raise cprlib.QmpError("no heartbeat (last %d)" % self.seq())
            time.sleep(0.0005)
        return self.seq()


@case
def linux():
    """A Linux guest (the live-update test's workload: heartbeat, memory
    fill and verify) restored LINUX_RESTORES times: after each restore its
    heartbeat starts again from the snapshot point, and it keeps
    working.  Every 200th restore is one with compare-paths (paused):
    loading the stream and replaying the plan give the same state."""
    work = tempfile.mkdtemp(prefix="cpr-snap-linux-")
    serial = os.path.join(work, "serial.sock")
    qmp_path = os.path.join(work, "qmp.sock")
    proc = subprocess.Popen(linuxvm.plain_args(512, serial, qmp_path))
    try:
        qmp = cprlib.Qmp(qmp_path, proc)
        hb = Heartbeat(serial)
        hb.wait(lambda s: s >= 100, timeout=120)
        qmp.cmd("stop")
        time.sleep(0.1)
        base = hb.seq()
        qmp.cmd("cpr-snapshot")
        qmp.cmd("cont")
        worst = 0
        restarts = 0
        t0 = time.monotonic()
        compared = 0
        for i in range(LINUX_RESTORES):
            hb.wait(lambda s: s > base + 2)
            if i % 200 == 1:
                # Both restore paths give the same state (the plan made
                # at the first restore, replayed by all the others)
                qmp.cmd("stop")
                qmp.cmd("cpr-restore", **{"compare-paths": True})
                qmp.cmd("cont")
                compared += 1
            else:
                qmp.cmd("cpr-restore")
            # The first full heartbeat after the restore: the snapshot's
            # next one, or one shortly after it (a line garbled by the
            # restore is skipped).
            first = hb.wait_restart(i + 1)
            restarts += base <= first <= base + 3
            worst = max(worst, first - base)
        elapsed = time.monotonic() - t0
        plan = qmp.cmd("query-cpr")["snapshot"].get("plan")
        qmp.cmd("cpr-snapshot-drop")
        with hb.lock:
            hb.cpus.clear()
        hb.wait(lambda s: s > base + 2000, timeout=120)
        info = qmp.cmd("query-status")
        diag("linux: %d restores in %.1f s, heartbeat restarted at the "
             "snapshot point + %d at most; afterwards %d heartbeats, and "
             "the heartbeats of CPUs %s; guest errors %s; both paths "
             "compared %d times; plan %s" %
             (LINUX_RESTORES, elapsed, worst, hb.seq() - base,
              sorted(hb.cpus), hb.errors, compared, plan))
        return (restarts == LINUX_RESTORES and not hb.errors and
                plan is not None and compared > 0 and
                hb.cpus == set(range(linuxvm.SMP)) and
                info["status"] == "running",
                "a Linux guest restored %d times restarts from the "
                "snapshot each time and keeps working" % LINUX_RESTORES)
    finally:
        proc.kill()
        proc.wait()
        for name in os.listdir(work):
            os.unlink(os.path.join(work, name))
        os.rmdir(work)


def main():
    print("TAP version 14")
    print("1..%d" % len(results))
    failed = 0
    for n, fn in enumerate(results, 1):
        try:
            ok, name = fn()
        except Exception as e:  # a case that blows up fails, the rest run
            ok, name = False, "%s: %s" % (getattr(fn, "__name__", "case"), e)
        print("%sok %d - %s" % ("" if ok else "not ", n, name), flush=True)
        failed |= not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
