#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""VM fork of the running Linux test guest (no network; heartbeat every
millisecond on a unix-socket serial port, memory pattern checked by the
guest, records written to and read back from a qcow2 disk, vmgenid):
cpr-fork, four children, each going on from the heartbeat of the fork
point by itself on its own overlay of the fork point's image, the parent
resumed apart from them on an overlay of its own (blockdev-snapshot-sync),
new generation IDs, every record on every disk, and one child reset again
and again to the fork point, its overlay emptied each time.  Prints TAP.

Environment: CPR_FORK_RESETS (resets of one child, 1000)."""

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "..", "scripts"))
import cprlib  # noqa: E402
import linuxvm  # noqa: E402

CHILDREN = 4
RESETS = int(os.environ.get("CPR_FORK_RESETS", "1000"))
tap = cprlib.Tap()
case, diag = tap.case, tap.diag


class Beats(linuxvm.Watch):
    """A Watch whose heartbeat may go back to the fork point after a
    reset; it keeps every heartbeat seen since the last mark()."""

    def __init__(self):
        super().__init__()
        self.cond = threading.Condition(self.lock)
        self.seen = []
        self.cpu_seen = {}      # CPU -> its heartbeats since mark()
        self.last = time.monotonic()
        self.vda = 0            # disk records, from the last status line

    def on_serial(self, line):
        with self.cond:
            self.last = time.monotonic()
        if line.startswith("S "):
            with self.cond:
                self.vda = self.parse_status(line).get("vda", 0)
        if line.startswith("H "):
            seq = int(line[2:])
            with self.cond:
                self.seen.append(seq)
                self.hb = seq
                self.cond.notify_all()
        elif line.startswith("C "):
            cpu, seq = (int(x) for x in line[2:].split())
            with self.cond:
                self.cpu_seen.setdefault(cpu, []).append(seq)
        elif not line.startswith("S "):
            super().on_serial(line)

    def mark(self):
        with self.cond:
            self.seen = []
            self.cpu_seen = {}

    # A reset cuts the line the guest was writing: the next line starts
    # with its beginning
    cut_lines = False

    def error(self, msg):
        if not (self.cut_lines and ": bad line b'" in msg):
            super().error(msg)

    def check_in_order(self, what):
        """Every heartbeat since mark() one after the other, and every
        CPU's too, from each of the guest's CPUs."""
        with self.cond:
            seen = list(self.seen)
            cpus = {c: list(s) for c, s in self.cpu_seen.items()}
        for a, b in zip(seen, seen[1:]):
            assert b == a + 1, "%s: heartbeat %d after %d" % (what, b, a)
        assert sorted(cpus) == list(range(linuxvm.SMP)), \
            "%s: heartbeats from CPUs %s" % (what, sorted(cpus))
        for c, s in cpus.items():
            for a, b in zip(s, s[1:]):
                assert b == a + 1, "%s: CPU %d heartbeat %d after %d" % \
                    (what, c, b, a)

    def first_after_mark(self, n=1, timeout=60):
        """The first heartbeat since mark(), once @n have come."""
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.seen) >= n, timeout):
                raise cprlib.QmpError("no heartbeat for %d s" % timeout)
            return self.seen[0]

    def quiet(self, t=0.05):
        """Wait until no line has come for @t seconds (the VM stopped)."""
        while True:
            with self.cond:
                idle = time.monotonic() - self.last
            if idle >= t:
                return
            time.sleep(t - idle)

    def back_at(self, point, timeout=60):
        """After mark() on a stopped, quiet VM and a reset: wait until the
        guest is back at the fork point @point, a heartbeat of it
        (@point to @point + 2) and the next one.  Only one line may come
        before it: the start of the line the stop cut, ended by the end
        of the line the guest was writing at the fork point (so any
        number).  Returns the first heartbeat of the fork point."""
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.seen) >= 3, timeout):
                raise cprlib.QmpError("no heartbeat for %d s after the "
                                      "reset: %s" % (timeout, self.seen))
            seen = list(self.seen[:3])
        k = 0 if point <= seen[0] <= point + 2 else 1
        if not point <= seen[k] <= point + 2 or seen[k + 1] != seen[k] + 1:
            raise AssertionError("heartbeats after the reset: %s, the fork "
                                 "point is %d" % (seen, point))
        return seen[k]


class Vm:
    def __init__(self, tag, channel=None, base=None):
        """A parent with a new disk, or a child (@channel) with an
        overlay on @base, the fork point's image."""
        self.dir = tempfile.mkdtemp(prefix="cpr-fork-%s-" % tag,
                                    dir=os.path.join(cprlib.TOP, "build"))
        serial = os.path.join(self.dir, "serial.sock")
        qmp = os.path.join(self.dir, "qmp.sock")
        self.disk = os.path.join(self.dir, "disk.qcow2")
        create = [linuxvm.QEMU_IMG, "create", "-q", "-f", "qcow2"]
        if base:
            create += ["-b", base, "-F", "qcow2"]
        subprocess.run(create + [self.disk, "%dM" % linuxvm.DISK_MB],
                       check=True)
        args = linuxvm.plain_args(1024, serial, qmp)
        args += ["-machine", "memfd-alloc=on", "-device", "vmgenid",
                 "-drive", "file=%s,format=qcow2,if=virtio,id=disk0" %
                 self.disk]
        if channel:
            args += ["-incoming", "cpr-fork:" + channel]
        self.proc = subprocess.Popen(args)
        self.beats = Beats()
        self.qmp = cprlib.Qmp(qmp, self.proc)
        self.sock = linuxvm.attach_serial(self.beats, serial)

    def disk_records(self, more, what, timeout=120):
        """Wait for @more disk records than now; the count."""
        start = self.beats.vda
        deadline = time.monotonic() + timeout
        while self.beats.vda < start + more:
            if time.monotonic() > deadline:
                raise cprlib.QmpError("%s wrote no disk records" % what)
            time.sleep(0.1)
        return self.beats.vda

    def heartbeats(self, n, what, timeout=120):
        """Wait for @n more heartbeats, one after the other."""
        self.beats.mark()
        self.beats.first_after_mark(n, timeout)
        self.beats.check_in_order(what)

    def kill(self):
        self.qmp.close()
        self.proc.kill()
        self.proc.wait()
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


parent = None
children = []
point = None


def fork(vm):
    """cpr-fork of @vm, whose disk goes on on an overlay of its own: the
    channel, the fork point's heartbeat and its image"""
    channel = "unix:" + os.path.join(vm.dir, "fork.sock")
    vm.qmp.cmd("cpr-fork", channel=channel)
    time.sleep(0.2)
    base = vm.disk
    vm.disk = os.path.join(vm.dir, "top.qcow2")
    vm.qmp.cmd("blockdev-snapshot-sync", device="disk0", format="qcow2",
               **{"snapshot-file": vm.disk})
    return channel, vm.beats.hb, base


@case
def children_go_on_from_the_fork_point():
    global parent, point
    parent = Vm("parent")
    parent.heartbeats(500, "parent")
    parent.disk_records(100, "parent")
    # The fork point's image stays as it is: the parent goes on on an
    # overlay, each child on one of its own
    channel, point, base = fork(parent)
    for i in range(CHILDREN):
        child = Vm("child%d" % i, channel, base)
        children.append(child)
        first = child.beats.first_after_mark()
        assert point <= first <= point + 2, \
            "child %d began at heartbeat %d, the fork point is %d" % \
            (i, first, point)
    for i, child in enumerate(children):
        child.heartbeats(500, "child %d" % i)
    assert parent.beats.hb == point, "the paused parent went on"
    diag("fork point at heartbeat %d; %d children went on from it" %
         (point, CHILDREN))


@case
def parent_resumed_apart():
    parent.qmp.cmd("cont")
    parent.heartbeats(500, "resumed parent")
    for i, child in enumerate(children):
        child.heartbeats(200, "child %d" % i)
    errs = [e for vm in [parent] + children for e in vm.beats.errors]
    assert not errs, "; ".join(errs[:5])


@case
def disks_apart():
    """Every record each VM wrote is on its own image, none of another's
    after the fork point (records go round the disk in order: a record
    of a VM that wrote more would be past this one's count)"""
    for vm in [parent] + children:
        vm.disk_records(200, vm.dir)
    for vm in [parent] + children:
        vm.qmp.cmd("stop")
    time.sleep(0.2)
    for vm in [parent] + children:
        problems = linuxvm.check_disk(vm.disk, "qcow2", vm.beats.vda,
                                      in_use=True)
        assert not problems, "%s: %s" % (vm.disk, problems)
    for vm in [parent] + children:
        vm.qmp.cmd("cont")
    diag("disk records: parent %d, children %s" %
         (parent.beats.vda, [c.beats.vda for c in children]))


@case
def child_of_a_child():
    """Child 1 forks in turn (its disk going on on an overlay of its
    own): its child goes on from child 1's fork point, with child 1's
    memory and disk as they were there, while child 1 goes on apart."""
    middle = children[1]
    channel, mpoint, base = fork(middle)
    grandchild = Vm("grandchild", channel, base)
    children.append(grandchild)
    first = grandchild.beats.first_after_mark()
    assert mpoint <= first <= mpoint + 2, \
        "the grandchild began at heartbeat %d, its fork point is %d" % \
        (first, mpoint)
    middle.qmp.cmd("cont")
    grandchild.heartbeats(500, "grandchild")
    middle.heartbeats(500, "child 1 after its fork")
    grandchild.disk_records(100, "grandchild")
    errs = grandchild.beats.errors + middle.beats.errors
    assert not errs, "; ".join(errs[:5])
    diag("child 1 forked at heartbeat %d (the first fork point: %d); its "
         "child went on from there" % (mpoint, point))


@case
def new_generation_ids():
    ids = [vm.qmp.cmd("query-vm-generation-id")["guid"]
           for vm in [parent] + children]
    assert len(set(ids)) == len(ids), "generation IDs: %s" % ids


@case
def reset_to_the_fork_point():
    child = children[0]
    worst = 0.0
    # Alone on the host's CPUs: a starved guest's kernel reports lockups
    for vm in [parent] + children[1:]:
        vm.qmp.cmd("stop")
    child.beats.cut_lines = True
    t_all = time.monotonic()
    for i in range(RESETS):
        if time.monotonic() > t_all + 600:
            raise AssertionError("%d resets took more than 600 s" % i)
        # Every line sent before the reset has come: only one may be cut
        child.qmp.cmd("stop")
        child.beats.quiet()
        child.beats.mark()
        t0 = time.monotonic()
        child.qmp.cmd("cpr-fork-reset", **{"empty-disks": ["disk0"]})
        worst = max(worst, time.monotonic() - t0)
        first = child.beats.back_at(point)
        assert point <= first <= point + 2, \
            "reset %d: heartbeat %d, the fork point is %d" % \
            (i + 1, first, point)
    child.heartbeats(200, "child 0 after the resets")
    child.disk_records(200, "child 0 after the resets")
    child.qmp.cmd("stop")
    time.sleep(0.2)
    problems = linuxvm.check_disk(child.disk, "qcow2", child.beats.vda,
                                  in_use=True)
    assert not problems, "child 0's disk: %s" % problems
    errs = child.beats.errors
    assert not errs, "; ".join(errs[:5])
    diag("%d resets in %.1f s, each back at the fork point's heartbeat; "
         "longest cpr-fork-reset %.1f ms" %
         (RESETS, time.monotonic() - t_all, worst * 1e3))


def main():
    try:
        return tap.run()
    finally:
        for vm in children + ([parent] if parent else []):
            vm.kill()


if __name__ == "__main__":
    sys.exit(main())
