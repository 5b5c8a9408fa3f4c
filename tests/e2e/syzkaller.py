#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""syzkaller's snapshot mode, unmodified, on -machine cpr-snapshot=on:
savevm, loadvm, delvm and info snapshots on the in-memory CPR snapshot,
x-ignore-shared, and a device excluded from restores.  Prints TAP.

The fuzzing flow is build/syz-host (tests/e2e/syz-host.c), which starts
QEMU with syzkaller's snapshot arguments and drives our guest executor
(tests/guest/syz-guest.c) over the ivshmem doorbell and shared memory
through HMP, as syzkaller does.

CPR_TEST_ACCEL (tcg,kvm) picks the accelerators of the flow; syzkaller's
own -cpu (host) is used under KVM, -cpu max under TCG."""

import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "..", "scripts"))
import cprlib  # noqa: E402

TOP = cprlib.TOP
ACCELS = os.environ.get("CPR_TEST_ACCEL", "tcg").split(",")
SYZ_HOST = os.path.join(TOP, "build", "syz-host")
SYZ_GUEST = os.path.join(TOP, "build", "guest", "syz-guest.elf")
INPUTS = int(os.environ.get("CPR_SYZ_INPUTS", "2000"))
SUMMARY = re.compile(r"syz-host: inputs=(\d+) seconds=([\d.]+) "
                     r"rate=([\d.]+) loadvm-median-ms=([\d.]+) "
                     r"input-median-ms=([\d.]+) failed=(\d+)")

tap = cprlib.Tap()
diag = tap.diag


def syz_host(accel, machine, inputs, opts=(), mem=1024, extra=()):
    """Run syz-host; its exit code, its summary (a dict) and output."""
    qemu = [cprlib.QEMU, "-machine", machine, "-accel", accel, "-m",
            str(mem), "-display", "none", "-nodefaults", "-kernel",
            SYZ_GUEST] + list(extra)
    cpu = [] if accel == "kvm" else ["-c", "max"]
    p = subprocess.run([SYZ_HOST, "-n", str(inputs)] + cpu + list(opts) +
                       ["--"] + qemu, capture_output=True, text=True,
                       timeout=900)
    m = SUMMARY.search(p.stdout)
    summary = None
    if m:
        summary = dict(zip(("inputs", "seconds", "rate", "loadvm_ms",
                            "input_ms", "failed"),
                           (int(m[1]), float(m[2]), float(m[3]),
                            float(m[4]), float(m[5]), int(m[6]))))
    return p.returncode, summary, p.stdout + p.stderr


def flow(accel):
    rc, s, out = syz_host(accel, "q35,cpr-snapshot=on", INPUTS)
    diag("%s: %s" % (accel, s))
    if rc or not s or s["inputs"] != INPUTS or s["failed"]:
        raise AssertionError("syz-host failed (%d): %s" % (rc, out[-2000:]))
    if "present in memory (cpr-snapshot=on)" not in out:
        raise AssertionError("info snapshots did not show the in-memory "
                             "snapshot: " + out[-2000:])


def flow_case(accel):
    def fn():
        """syzkaller's sequence, unmodified (its QEMU arguments, HMP
        savevm syz once and loadvm syz before every input), with
        -machine cpr-snapshot=on appended: each input runs in the
        snapshot's guest (RAM as at the snapshot, the input before's
        writes gone) and its output is right; the input memory, shared,
        is left alone with x-ignore-shared."""
        flow(accel)
    fn.__name__ = "syzkaller-flow-" + accel
    return fn


for _accel in ACCELS:
    tap.case(flow_case(_accel))


@tap.case
def one_device_kept():
    """ivshmem-doorbell alone, its own shared memory carrying input and
    output, excluded with cpr-snapshot-exclude: its state goes on across
    loadvm (each input finds IntrMask as the input before left it).
    Without the exclusion the device comes back as at the snapshot, which
    the same check catches."""
    rc, s, out = syz_host("tcg", "q35,cpr-snapshot=on,cpr-snapshot-exclude="
                          "snapshot-doorbell", 1000, ("-1", "-k"))
    diag("kept: %s" % s)
    if rc or not s or s["failed"] or s["inputs"] != 1000:
        raise AssertionError("with the device excluded (%d): %s" %
                             (rc, out[-2000:]))
    rc, s, out = syz_host("tcg", "q35,cpr-snapshot=on", 20, ("-1", "-k"))
    diag("not excluded: %s" % s)
    if rc != 1 or not s or s["failed"] < 19 or \
            "intrmask 0x5a5a" not in out:
        raise AssertionError("without the exclusion the device's state "
                             "should come back (%d): %s" % (rc, out[-2000:]))


@tap.case
def device_ram_kept():
    """Without x-ignore-shared, excluding the doorbell device leaves its
    own memory (input, state word and output) alone too, as the device's
    RAM block; not excluded, that memory comes back from the snapshot
    with each loadvm: the state word reads Ready again, and the executor
    never sees its input."""
    machine = "q35,cpr-snapshot=on"
    rc, s, out = syz_host("tcg", machine + ",cpr-snapshot-exclude="
                          "snapshot-doorbell", 500, ("-1", "-k", "-S"))
    diag("kept, no x-ignore-shared: %s" % s)
    if rc or not s or s["failed"] or s["inputs"] != 500:
        raise AssertionError("with the device excluded (%d): %s" %
                             (rc, out[-2000:]))
    rc, s, out = syz_host("tcg", machine, 5, ("-1", "-S"))
    diag("not excluded, no x-ignore-shared: %s" % s)
    if rc != 1 or "input 1: state 2, output seq 0 " not in out:
        raise AssertionError("the device's memory should have come back "
                             "(%d): %s" % (rc, out[-2000:]))


@tap.case
def fork_workers():
    """Parallel workers from VM fork: the VM becomes a fork point once
    the executor waits for inputs (cpr-fork, its doorbell excluded: each
    VM keeps its own shared memory), two workers run from it at the same
    time, each with its own memory and doorbell, going back to the fork
    point with cpr-fork-reset before every input; every output is the
    right one for that worker's own input.  A fork with an exclusion
    naming nothing is refused."""
    rc, s, out = syz_host("tcg", "q35,memfd-alloc=on", 300, ("-F", "2"))
    diag("2 workers: %s" % s)
    if rc or not s or s["failed"] or s["inputs"] != 2 * 299 or \
            out.count("pss-kb worker") != 2:
        raise AssertionError("fork workers (%d): %s" % (rc, out[-2000:]))
    vm = cprlib.Vm(64)
    try:
        try:
            vm.qmp.cmd("cpr-fork", channel="unix:%s/f.sock" % vm.dir,
                       exclude=["nosuch"])
            raise AssertionError("cpr-fork with a bad exclusion worked")
        except cprlib.QmpError as e:
            if "'nosuch' is neither a memory backend nor a device" not in \
                    str(e):
                raise
        if vm.status() != "running":
            raise AssertionError("a refused fork stopped the VM")
    finally:
        vm.kill()


@tap.case
def stock_without_opt_in():
    """Without cpr-snapshot=on, savevm and loadvm are stock: the snapshot
    goes to the qcow2 image (info snapshots lists it on the disks), and
    the same flow works."""
    with tempfile.TemporaryDirectory(prefix="cpr-syz-") as d:
        disk = os.path.join(d, "disk.qcow2")
        subprocess.run([os.path.join(os.path.dirname(cprlib.QEMU),
                                     "qemu-img"), "create", "-q", "-f",
                        "qcow2", disk, "64M"], check=True)
        rc, s, out = syz_host("tcg", "q35", 3, mem=128,
                              extra=["-drive", "if=none,id=d0,file=" + disk])
    diag("stock: %s" % s)
    if rc or not s or s["failed"] or "present on all disks" not in out:
        raise AssertionError("stock savevm/loadvm (%d): %s" %
                             (rc, out[-2000:]))


def hmp(vm, line):
    return vm.qmp.cmd("human-monitor-command", **{"command-line": line})


def expect(vm, line, want):
    """HMP @line's output must contain @want ("" for: be empty)."""
    out = hmp(vm, line)
    if (want == "" and out) or want not in out:
        raise AssertionError("%s: %r, wanted %r" % (line, out, want))
    return out


@tap.case
def hmp_commands():
    """savevm, loadvm, delvm and info snapshots as a user types them:
    one snapshot in memory, replaced under its own name, another name
    refused; loadvm of an unknown name refused (the VM stopped, as stock
    leaves it, with a STOP event, and cont resumes it); a loadvm that
    restores sends no STOP or RESUME; delvm of an unknown name is no
    error, as stock; savevm
    without a name makes one up; a cpr-snapshot without a name blocks
    savevm until dropped; query-cpr names the snapshot."""
    vm = cprlib.Vm(128, machine="q35,cpr-snapshot=on",
                   disk_opts=",if=virtio,readonly=on")
    try:
        expect(vm, "info snapshots", "There is no snapshot available.")
        expect(vm, "savevm a", "")
        expect(vm, "info snapshots", "in memory (cpr-snapshot=on)")
        expect(vm, "info snapshots", "1         a ")
        info = vm.qmp.cmd("query-cpr")["snapshot"]
        if info.get("name") != "a" or not info["date-sec"]:
            raise AssertionError("query-cpr: %s" % info)
        expect(vm, "savevm b", "the in-memory snapshot 'a' exists")
        expect(vm, "loadvm a", "")
        expect(vm, "savevm a", "")
        if vm.qmp.cmd("query-cpr")["snapshot"]["restores"] != 0:
            raise AssertionError("savevm a did not replace a")
        since = len(vm.qmp.events)
        expect(vm, "loadvm b", "there is no snapshot 'b' in memory")
        if vm.status() != "restore-vm":
            raise AssertionError("after a refused loadvm: %s" % vm.status())
        vm.qmp.cmd("cont")
        expect(vm, "loadvm a", "")
        if vm.status() != "running" or \
                vm.qmp.cmd("query-cpr")["snapshot"]["restores"] != 1:
            raise AssertionError("loadvm a: %s" % vm.status())
        # STOP for the refused loadvm, RESUME for cont; none for loadvm a
        events = [e for e, _ in vm.qmp.events[since:]
                  if e in ("STOP", "RESUME")]
        if events != ["STOP", "RESUME"]:
            raise AssertionError("events: %s" % events)
        expect(vm, "delvm b", "")
        if "snapshot" not in vm.qmp.cmd("query-cpr"):
            raise AssertionError("delvm b dropped a")
        expect(vm, "delvm a", "")
        if "snapshot" in vm.qmp.cmd("query-cpr"):
            raise AssertionError("delvm a left the snapshot")
        expect(vm, "savevm", "")
        name = vm.qmp.cmd("query-cpr")["snapshot"].get("name", "")
        if not re.match(r"vm-\d{14}$", name):
            raise AssertionError("savevm without a name: %r" % name)
        expect(vm, "delvm " + name, "")
        vm.qmp.cmd("cpr-snapshot")
        expect(vm, "savevm c", "a snapshot taken by cpr-snapshot exists")
        vm.qmp.cmd("cpr-snapshot-drop")
        expect(vm, "savevm c", "")
        vm.wait_passes(1)
        jobs(vm)
    finally:
        vm.kill()


def run_job(vm, command, job_id, tag):
    """Run a snapshot job to its end; its error, or None."""
    args = {"job-id": job_id, "tag": tag, "devices": []}
    if command != "snapshot-delete":
        args["vmstate"] = "none"
    vm.qmp.cmd(command, **args)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = [j for j in vm.qmp.cmd("query-jobs") if j["id"] == job_id][0]
        if job["status"] == "concluded":
            vm.qmp.cmd("job-dismiss", id=job_id)
            return job.get("error")
        time.sleep(0.05)
    raise AssertionError("%s did not end" % command)


def jobs(vm):
    """The QMP jobs snapshot-save, -load and -delete take the same path:
    no disk needed, the snapshot named by the tag."""
    vm.qmp.cmd("human-monitor-command", **{"command-line": "delvm c"})
    err = run_job(vm, "snapshot-save", "s1", "q")
    info = vm.qmp.cmd("query-cpr").get("snapshot", {})
    if err or info.get("name") != "q":
        raise AssertionError("snapshot-save: %s, %s" % (err, info))
    err = run_job(vm, "snapshot-load", "l1", "q")
    info = vm.qmp.cmd("query-cpr")["snapshot"]
    if err or info["restores"] != 1 or vm.status() != "running":
        raise AssertionError("snapshot-load: %s, %s" % (err, info))
    err = run_job(vm, "snapshot-delete", "d1", "q")
    if err or "snapshot" in vm.qmp.cmd("query-cpr"):
        raise AssertionError("snapshot-delete: %s" % err)


def qemu_io(vm, out, cmd):
    """HMP qemu-io on disk d1; what it printed (QEMU's stdout, @out)."""
    start = out.seek(0, os.SEEK_END)
    expect(vm, 'qemu-io d1 "%s"' % cmd, "")
    out.seek(start)
    return out.read()


def read_back(vm, out, pattern):
    """The first 64 KiB of disk d1 hold @pattern."""
    said = qemu_io(vm, out, "read -P 0x%x 0 64k" % pattern)
    if "read 65536/65536" not in said or "verification failed" in said:
        raise AssertionError("disk d1 does not hold 0x%x: %r" %
                             (pattern, said))


@tap.case
def disks_come_back():
    """A writable disk (written through qemu-io, as a guest would): savevm
    puts it under an overlay, each loadvm brings back what it read at the
    snapshot (written since or not), a second savevm too; what was
    written after savevm never reaches the image (as with -snapshot), the
    overlays' files are not left behind, and migration and cprsave are
    blocked for good (the writes live in this process only)."""
    with tempfile.TemporaryDirectory(prefix="cpr-syz-") as d:
        disk = os.path.join(d, "data.img")
        with open(disk, "wb") as f:
            f.truncate(16 << 20)
        before = set(os.listdir(tempfile.gettempdir()))
        out = open(os.path.join(d, "stdout"), "w+")
        vm = cprlib.Vm(128, machine="q35,cpr-snapshot=on",
                       extra=["-drive", "if=none,id=d1,format=raw,file=" +
                              disk, "-device",
                              "virtio-blk-pci,drive=d1,id=vd1"],
                       stdout=out)
        try:
            qemu_io(vm, out, "write -P 0x11 0 64k")
            read_back(vm, out, 0x11)
            expect(vm, "savevm s", "")
            nodes = [n["node-name"] for n in
                     vm.qmp.cmd("query-named-block-nodes")]
            if not any(n.startswith("cpr-snapshot-disk") for n in nodes):
                raise AssertionError("no overlay: %s" % nodes)
            for i in range(3):
                qemu_io(vm, out, "write -P 0x22 0 64k")
                read_back(vm, out, 0x22)
                expect(vm, "loadvm s", "")
                read_back(vm, out, 0x11)
            # not written since: the overlay is left as it is
            expect(vm, "loadvm s", "")
            read_back(vm, out, 0x11)
            # a new snapshot over the first: one more overlay
            qemu_io(vm, out, "write -P 0x44 0 64k")
            expect(vm, "savevm s", "")
            qemu_io(vm, out, "write -P 0x55 0 64k")
            expect(vm, "loadvm s", "")
            read_back(vm, out, 0x44)
            expect(vm, "delvm s", "")
            qemu_io(vm, out, "write -P 0x33 0 64k")
            read_back(vm, out, 0x33)
            # the writes live in this process only: nothing may move it
            reasons = [b["reason"] for b in
                       vm.qmp.cmd("query-cpr")["blockers"]]
            if not any("disks are under overlays" in r for r in reasons):
                raise AssertionError("no blocker for the overlays: %s" %
                                     reasons)
            vm.wait_passes(1)
        finally:
            vm.kill()
            out.close()
        with open(disk, "rb") as f:
            data = f.read(65536)
        left = [n for n in set(os.listdir(tempfile.gettempdir())) - before
                if n.startswith("qemu-cpr-disk-")]
        if data != b"\x11" * 65536 or left:
            raise AssertionError("the image after the run: %r..., files "
                                 "left: %s" % (data[:8], left))


@tap.case
def excluded_device():
    """A device named in cpr-snapshot-exclude (usb-kbd, on an xHCI
    controller) is left out: loadvm and cpr-restore's verify (which saves
    the device state again) pass; a CPU is refused; once it is unplugged,
    loadvm is refused, naming it, and the VM goes on when continued; an
    exclusion naming nothing is refused by savevm, the VM running on."""
    vm = cprlib.Vm(128, machine="q35,cpr-snapshot=on,"
                   "cpr-snapshot-exclude=kbd:nosuch",
                   extra=["-device", "qemu-xhci,id=xhci",
                          "-device", "usb-kbd,id=kbd"],
                   disk_opts=",if=virtio,readonly=on")
    try:
        expect(vm, "savevm s", "'nosuch' is neither a memory backend nor "
               "a device")
        if vm.status() != "running" or \
                "snapshot" in vm.qmp.cmd("query-cpr"):
            raise AssertionError("a refused savevm changed the VM")
        vm.qmp.cmd("qom-set", path="/machine", property="cpr-snapshot-"
                   "exclude", value="/machine/unattached/device[0]")
        expect(vm, "savevm s", "is a CPU, whose state every restore puts "
               "back")
        vm.qmp.cmd("qom-set", path="/machine", property="cpr-snapshot-"
                   "exclude", value="kbd")
        expect(vm, "savevm s", "")
        vm.qmp.cmd("stop")
        vm.qmp.cmd("cpr-restore", verify=True)
        vm.qmp.cmd("cont")
        expect(vm, "loadvm s", "")
        if vm.qmp.cmd("query-cpr")["snapshot"]["excluded"] != ["kbd"]:
            raise AssertionError("query-cpr: excluded not as given")
        vm.qmp.cmd("device_del", id="kbd")
        vm.qmp.wait_event("DEVICE_DELETED")
        expect(vm, "loadvm s", "device 'kbd', whose state the snapshot "
               "keeps, is gone")
        vm.qmp.cmd("cont")
        vm.wait_passes(1)
        expect(vm, "delvm s", "")
    finally:
        vm.kill()


if __name__ == "__main__":
    sys.exit(tap.run())
