#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Live update of a running Linux guest (build/guest/linux) with tap
networking, raw and qcow2 virtio disks, a unix-socket and a pty serial
console, a QMP client that stays connected and a second one that sends
commands back to back.  One guest goes through
every case in order (exec-mode updates, then transfers to new processes,
one of them under libvirt's default sandbox, then exec-mode updates
through a relay process); the host checks heartbeats,
TCP records and status lines all along and the disk images at the end.
Prints TAP.

Arguments: the cases to run (their TAP names; boot is always run), or
none for all.  Needs root (network namespace, tap).  Environment:
CPR_TEST_ACCEL (tcg), CPR_QEMU and CPR_QEMU_B (builds A and B),
CPR_SOAK (number of updates in the soak, exec and transfer mixed, 50),
CPR_TRANSFER_SOAK (number of transfers in the transfer soak, 10),
CPR_RELAY_SOAK (number of relayed updates, 10)."""

import ctypes
import fcntl
import json
import mmap
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "..", "scripts"))
import cprlib  # noqa: E402
import fuzzvm  # noqa: E402
import linuxvm  # noqa: E402

QEMU_A = cprlib.QEMU
QEMU_B = os.environ.get("CPR_QEMU_B") or os.path.join(cprlib.TOP, "build",
                                                  "qemu-system-x86_64-b")
RNG = "virtio-rng-pci,id=rng0"
# The VM's devices beyond linuxvm's: the rng, which a build without it
# refuses, and two PCIe root ports for hot-plug
EXTRA = ["-device", RNG,
         "-device", "pcie-root-port,id=rp1,chassis=1",
         "-device", "pcie-root-port,id=rp2,chassis=2"]
HOT_TAP = "cprtap5"
TUNSETIFF = 0x400454ca
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
# A second QMP monitor, for the soak's busy client
BUSY_QMP = os.path.join(tempfile.mkdtemp(prefix="cpr-busy-"), "qmp.sock")
EXTRA += ["-qmp", "unix:%s,server=on,wait=off" % BUSY_QMP]
SANDBOX = ["-sandbox", "on,obsolete=deny,elevateprivileges=deny,"
           "spawn=deny,resourcecontrol=deny"]

vm = None
results = []
seen_errors = 0


def diag(msg):
    print("# " + msg, flush=True)


def new_errors():
    global seen_errors
    errs = vm.watch.snapshot()["errors"]
    fresh = errs[seen_errors:]
    seen_errors = len(errs)
    return fresh


def case(fn):
    results.append(fn)
    return fn


def run(names):
    """Run the cases, or only those in @names (their TAP names) and
    boot, which starts the VM."""
    if names:
        unknown = set(names) - {fn.__name__.replace("_", "-")
                                for fn in results}
        if unknown:
            sys.exit("no such case: %s" % ", ".join(sorted(unknown)))
        results[:] = [fn for fn in results if fn is boot or
                      fn.__name__.replace("_", "-") in names]
    print("TAP version 14")
    print("1..%d" % len(results), flush=True)
    failed = 0
    for i, fn in enumerate(results, 1):
        name = fn.__name__.replace("_", "-")
        try:
            fn()
            errs = new_errors() if vm else []
            if errs:
                raise AssertionError("; ".join(errs[:5]))
            print("ok %d - %s" % (i, name), flush=True)
        except Exception as e:  # report and go on with the next case
            failed += 1
            print("not ok %d - %s" % (i, name))
            for line in str(e).splitlines() or [type(e).__name__]:
                diag(line)
            sys.stdout.flush()
    return failed


def version():
    return vm.qmp.cmd("query-version")["package"]


def script(name, text):
    path = os.path.join(vm.dir, name)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o700)
    return path


def vm_pids():
    """The QEMU processes whose arguments name the VM's directory."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv[0] in (QEMU_A.encode(), QEMU_B.encode()) and \
                vm.dir.encode() in b" ".join(argv):
            pids.append(int(pid))
    return pids


def find_vm_pid():
    """The PID that runs the VM now (after a take-back it is the helper's)."""
    pids = vm_pids()
    if not pids:
        raise AssertionError("no QEMU runs the VM")
    return pids[0]


def check_running_after(what, pid):
    st = vm.qmp.cmd("query-status")["status"]
    assert st == "running", "%s: VM is %s" % (what, st)
    assert find_vm_pid() == pid, "%s: VM PID changed" % what


@case
def boot():
    global vm
    vm = linuxvm.LinuxVm(accel=os.environ.get("CPR_TEST_ACCEL", "tcg"),
                         extra=EXTRA)
    vm.start()
    st = vm.watch.snapshot()
    diag("guest up %d ms, heartbeat %d, mem passes %d, net %d, vda %d, "
         "vdb %d" % (st["up"], st["hb"], st["mem"], st["net_host"],
                     st["vda"], st["vdb"]))


@case
def update_keeps_everything():
    pci = vm.qmp.cmd("query-pci")
    before = vm.watch.snapshot()
    t0 = time.monotonic()
    pause, gap = vm.update()
    after = vm.wait_progress()
    assert find_vm_pid() == vm.pid, "PID changed"
    assert vm.qmp.cmd("query-pci") == pci, "PCI devices differ"
    assert after["up"] > before["up"], "uptime did not grow"
    assert vm.watch.net_conns == 1, "TCP connection was reopened"
    diag("pause %.1f ms (QMP STOP->RESUME), largest heartbeat gap at the "
         "host %.1f ms, largest gap of one of the %d CPUs' own heartbeats "
         "%.1f ms" % (pause * 1e3, gap * 1e3, len(after["cpu_hb"]),
                      vm.watch.max_gap(t0, cpus=True) * 1e3))


def a_b_a(move):
    """To build B and back to A with @move (vm.update or vm.transfer)."""
    a = version()
    st0 = vm.watch.snapshot()
    pause_b, _ = move(QEMU_B)
    b = version()
    assert b != a, "build B reports the same version %r" % a
    pause_a, _ = move(QEMU_A)
    assert version() == a, "back on A but version is %r" % version()
    st1 = vm.wait_progress()
    assert st1["up"] > st0["up"] and st1["hb"] > st0["hb"]
    diag("%r -> %r -> %r: pauses %.1f, %.1f ms" %
         (a, b, version(), pause_b * 1e3, pause_a * 1e3))


@case
def cross_version_a_b_a():
    a_b_a(vm.update)


@case
def missing_binary_resumes():
    try:
        vm.qmp.cmd("cprsave", file=vm.state, mode="restart",
                    binary=os.path.join(vm.dir, "no-such-qemu"))
        raise AssertionError("cprsave with a missing binary succeeded")
    except cprlib.QmpError as e:
        diag(str(e))
    check_running_after("missing binary", vm.pid)
    vm.wait_progress()


@case
def binary_crashes_on_startup():
    crash = script("crash.sh", "#!/bin/sh\nkill -KILL $$\n")
    try:
        vm.qmp.cmd("cprsave", file=vm.state, mode="restart", binary=crash)
        raise AssertionError("cprsave to a crashing binary succeeded")
    except cprlib.QmpError as e:
        diag(str(e))
    assert vm.qmp.cmd("query-status")["status"] != "running"
    vm.qmp.cmd("cprload", file=vm.state)
    vm.pid = find_vm_pid()
    check_running_after("crash recovery", vm.pid)
    vm.wait_progress()


@case
def new_binary_refuses_state():
    # An "incompatible build": the same QEMU without one of the devices.
    drop = drop_rng_script()
    vm.qmp.cmd("cprsave", file=vm.state, mode="restart", binary=drop)
    try:
        vm.qmp.cmd("cprload", file=vm.state)
        raise AssertionError("the build without virtio-rng took the state")
    except cprlib.QmpError as e:
        diag(str(e))
    # The operator backs out: quitting hands the VM to the old binary.
    vm.qmp.cmd("quit")
    vm.qmp.cmd("cprload", file=vm.state)
    vm.pid = find_vm_pid()
    check_running_after("back-out", vm.pid)
    devs = [d["qdev_id"] for b in vm.qmp.cmd("query-pci")
            for d in b["devices"]]
    assert "rng0" in devs, "the old configuration did not come back"
    vm.wait_progress()


def wait_migration(states, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        st = vm.qmp.cmd("query-migrate").get("status")
        if st in states or time.monotonic() > deadline:
            return st
        time.sleep(0.05)


@case
def refused_during_migration():
    vm.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 20})
    vm.qmp.cmd("migrate", uri="exec:cat >/dev/null")
    st = wait_migration(("active", "failed", "completed"))
    assert st == "active", "migration is %s" % st
    try:
        vm.qmp.cmd("cprsave", file=vm.state, mode="restart")
        raise AssertionError("cprsave during a migration succeeded")
    except cprlib.QmpError as e:
        diag(str(e))
    st = vm.qmp.cmd("query-migrate")["status"]
    assert st == "active", "migration is %s after cprsave" % st
    vm.qmp.cmd("migrate_cancel")
    st = wait_migration(("cancelled", "failed", "completed"))
    assert st == "cancelled", "migration is %s after migrate_cancel" % st
    vm.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 128 << 20})
    check_running_after("refused cprsave", vm.pid)
    vm.wait_progress()


def kb_field(path, name):
    with open(path) as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s in %s" % (name, path))


LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.mmap.restype = ctypes.c_void_p
LIBC.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                      ctypes.c_int, ctypes.c_int, ctypes.c_long]
LIBC.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
LIBC.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def memfd_resident_kb(pid):
    """KiB in memory of the memfds process @pid holds (guest RAM), counted
    with mincore(): mapped by it or not yet."""
    seen, total = set(), 0
    for fd in os.listdir("/proc/%d/fd" % pid):
        path = "/proc/%d/fd/%s" % (pid, fd)
        try:
            if not os.readlink(path).startswith("/memfd:"):
                continue
            f = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            st = os.fstat(f)
            if (st.st_dev, st.st_ino) in seen or not st.st_size:
                continue
            seen.add((st.st_dev, st.st_ino))
            addr = LIBC.mmap(None, st.st_size, mmap.PROT_READ,
                             mmap.MAP_SHARED, f, 0)
            assert addr not in (None, ctypes.c_void_p(-1).value), \
                "mmap: %s" % os.strerror(ctypes.get_errno())
            pages = (st.st_size + 4095) // 4096
            vec = (ctypes.c_ubyte * pages)()
            rc = LIBC.mincore(addr, st.st_size, vec)
            LIBC.munmap(addr, st.st_size)
            assert rc == 0, "mincore: %s" % os.strerror(ctypes.get_errno())
            total += sum(bytes(vec)) * 4
        finally:
            os.close(f)
    return total


def shmem_kb():
    """The host's shared memory (/proc/meminfo Shmem) but the memfds of
    the QEMU running the VM: guest RAM the guest touches for the first
    time is in both, a memfd left behind by an update only in the
    host's."""
    return kb_field("/proc/meminfo", "Shmem") - memfd_resident_kb(vm.pid)


def check_flat(what, values, band):
    """After the first few updates, @values (KiB) stay within @band of
    the first third: none above its top by @band or more, and the floor
    of the last third not above that of the first by @band or more."""
    n = len(values)
    start = min(5, n - 1)
    k = max(3, (n - start) // 3)
    first, last = values[start:start + k], values[-k:]
    assert (max(values[start:]) - max(first) < band and
            min(last) - min(first) < band), "%s grows: %s" % (what, values)


def soak_with(move, n, what, after=None):
    """@n updates, each by @move(binary) (vm.update, vm.transfer or a
    mix), A<->B: no heartbeat, record or disk write lost or repeated;
    the QEMU process's descriptors the same after each; its anonymous
    memory and the host's Shmem flat once the heap has settled; @after(i)
    checks more after each."""
    pauses, gaps, fds, anon, rss, shmem = [], [], [], [], [], []
    hb0 = vm.watch.snapshot()["hb"]
    for i in range(n):
        pause, gap = move(QEMU_B if i % 2 == 0 else QEMU_A, i)
        pauses.append(pause * 1e3)
        gaps.append(gap * 1e3)
        fds.append(vm.fd_count())
        a, r = vm.rss_kb()
        anon.append(a)
        rss.append(r)
        shmem.append(shmem_kb())
        errs = vm.watch.snapshot()["errors"][seen_errors:]
        assert not errs, "%s %d: %s" % (what, i + 1, "; ".join(errs[:5]))
        if after:
            after(i)
    st = vm.watch.snapshot()
    diag("%d %ss (A<->B), %d heartbeats in order, none lost or repeated"
         % (n, what, st["hb"] - hb0))
    diag("pause ms: median %.1f, max %.1f; host heartbeat gap ms: median "
         "%.1f, max %.1f" % (statistics.median(pauses), max(pauses),
                             statistics.median(gaps), max(gaps)))
    diag("open fds per %s: %s" % (what, sorted(set(fds))))
    diag("RssAnon KiB first/last/max: %d/%d/%d; VmRSS KiB first/last: %d/%d"
         % (anon[0], anon[-1], max(anon), rss[0], rss[-1]))
    diag("host Shmem but the QEMU's memfds, KiB first/last/min/max: "
         "%d/%d/%d/%d"
         % (shmem[0], shmem[-1], min(shmem), max(shmem)))
    assert len(set(fds)) == 1, "open fd count changed: %s" % fds
    # The heap settles after a few updates; after that it only wobbles
    # (the malloc arenas of the vCPU threads: in steps of 2 MiB, up to
    # 4 MiB, with four vCPUs).  Guest RAM is 1 GiB of memfds in Shmem: a
    # copy of it, or of a RAM block, left behind by an update shows.
    check_flat("RssAnon", anon, 4096)
    check_flat("Shmem", shmem, 16384)


class BusyClient:
    """A second QMP client, on its own monitor, that sends commands back
    to back for as long as it runs, across every update: each gets
    exactly one answer, in order, and none is an error."""

    COMMANDS = ("query-status", "query-cpr", "query-cpus-fast",
                "query-block")

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.f = self.sock.makefile("rb")
        json.loads(self.f.readline())
        self.sent = self.answered = 0
        self.slowest = 0.0
        self.problem = None
        self.stop = False
        self.send("qmp_capabilities")
        self.wait_answer()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def send(self, name):
        self.sent += 1
        self.sock.sendall(json.dumps({"execute": name,
                                      "id": self.sent}).encode() + b"\n")

    def wait_answer(self):
        while True:
            line = self.f.readline()
            if not line:
                raise AssertionError("the connection ended after %d "
                                     "commands" % self.sent)
            msg = json.loads(line)
            if "event" in msg:
                continue
            if msg.get("id") != self.sent:
                raise AssertionError("answer %r to command %d" %
                                     (msg, self.sent))
            if "error" in msg:
                raise AssertionError("command %d: %s" %
                                     (self.sent, msg["error"]["desc"]))
            self.answered += 1
            return

    def run(self):
        try:
            while not self.stop:
                t0 = time.monotonic()
                self.send(self.COMMANDS[self.sent % len(self.COMMANDS)])
                self.wait_answer()
                self.slowest = max(self.slowest, time.monotonic() - t0)
        except Exception as e:  # reported by finish()
            self.problem = "second QMP client: %s" % e

    def progress(self, what, timeout=30):
        """The client goes on: new answers within @timeout s."""
        base = self.answered
        deadline = time.monotonic() + timeout
        while self.answered < base + 2:
            assert self.problem is None, self.problem
            assert time.monotonic() < deadline, \
                "second QMP client: command %d not answered %d s after %s" \
                % (self.sent, timeout, what)
            time.sleep(0.01)

    def finish(self):
        self.stop = True
        self.thread.join(60)
        self.sock.close()
        assert not self.thread.is_alive(), \
            "second QMP client: command %d not answered" % self.sent
        assert self.problem is None, self.problem
        diag("second QMP client: %d commands, each answered once, in order; "
             "slowest answer %.1f ms" % (self.answered, self.slowest * 1e3))


def mixed_move(binary, i):
    """Updates in turn by exec (restart) and by transfer, two of each in
    a row so that both go A->B and B->A."""
    return (vm.update if (i // 2) % 2 == 0 else vm.transfer)(binary)


@case
def soak():
    """CPR_SOAK (50) updates mixing exec and transfer, A<->B, with the
    guest's network and disk traffic, a second QMP client busy all along,
    and another VM restoring snapshots in a loop meanwhile."""
    n = int(os.environ.get("CPR_SOAK", "50"))
    busy = BusyClient(BUSY_QMP)
    fuzz = fuzzvm.FuzzVm("tcg", pages=16)
    try:
        io0 = fuzz.wait(lambda io: io["iterations"] >= 100)
        soak_with(mixed_move, n, "update", lambda i: busy.progress(
            "update %d (%s)" % (i + 1, "exec" if (i // 2) % 2 == 0
                                else "transfer")))
        io = fuzz.io()
    except Exception:
        busy.stop = True
        raise
    finally:
        fuzz.kill()
    busy.finish()
    ran = io["iterations"] - io0["iterations"]
    diag("the other VM: %d snapshot restores meanwhile, %d errors"
         % (io["restored"] - io0["restored"], io["errors"]))
    assert io["errors"] == 0 and ran > 0, "the other VM: %s" % io


def drop_rng_script():
    """A QEMU A that drops the virtio-rng device from its arguments: an
    incompatible build (the state has a device it lacks)."""
    return script("drop-rng.sh", """#!/bin/bash
args=()
for a in "$@"; do
    if [ "$a" = "%s" ]; then
        unset 'args[-1]'
        continue
    fi
    args+=("$a")
done
exec %s "${args[@]}"
""" % (RNG, QEMU_A))


@case
def transfer_keeps_everything():
    """cprsave transfer to a new process started with the same arguments:
    the same tap, disks, consoles and QMP client, in another PID."""
    pci = vm.qmp.cmd("query-pci")
    before = vm.watch.snapshot()
    old_pid = vm.pid
    pause, gap = vm.transfer()
    after = vm.wait_progress()
    assert vm.pid != old_pid, "PID did not change"
    assert vm_pids() == [vm.pid], "QEMUs running the VM: %s" % vm_pids()
    assert vm.qmp.cmd("query-pci") == pci, "PCI devices differ"
    assert after["up"] > before["up"], "uptime did not grow"
    assert vm.watch.net_conns == 1, "TCP connection was reopened"
    diag("pause %.1f ms (QMP STOP->RESUME), largest heartbeat gap at the "
         "host %.1f ms" % (pause * 1e3, gap * 1e3))


@case
def transfer_a_b_a():
    a_b_a(vm.transfer)


def refused_stays(move, what):
    """@move (vm.transfer or vm.relay) to a build that cannot take the
    state: the VM never left this process, which goes on running it;
    cprsave says why."""
    pid = vm.pid
    try:
        move(drop_rng_script())
        raise AssertionError("the build without virtio-rng took the VM")
    except cprlib.QmpError as e:
        diag(str(e))
    check_running_after("refused " + what, pid)
    vm.wait_progress()


@case
def transfer_refused_stays():
    refused_stays(vm.transfer, "transfer")


@case
def transfer_under_sandbox():
    """To a new process under libvirt's default seccomp sandbox, which
    blocks exec-mode updates, and from it to the next one."""
    vm.transfer(extra=SANDBOX)
    blockers = vm.qmp.cmd("query-cpr")["blockers"]
    modes = sorted({b["mode"] for b in blockers if b["object"] == "sandbox"})
    assert modes == ["restart"], "sandbox blocks %s" % modes
    pause, gap = vm.transfer(extra=SANDBOX)
    vm.transfer()
    diag("sandboxed to sandboxed: pause %.1f ms, heartbeat gap %.1f ms" %
         (pause * 1e3, gap * 1e3))


@case
def transfer_soak():
    soak_with(lambda binary, i: vm.transfer(binary), int(os.environ.get("CPR_TRANSFER_SOAK", "10")),
              "transfer")

@case
def relay_keeps_everything():
    """cprsave restart with relay: through a relay process and back into
    the same PID, with the same tap, disks, consoles and QMP client."""
    pci = vm.qmp.cmd("query-pci")
    before = vm.watch.snapshot()
    pid = vm.pid
    since = len(vm.qmp.events)
    pause, gap = vm.relay()
    after = vm.wait_progress()
    assert vm.pid == pid and vm_pids() == [pid], \
        "QEMUs running the VM: %s, expected %d" % (vm_pids(), pid)
    assert vm.qmp.cmd("query-pci") == pci, "PCI devices differ"
    assert after["up"] > before["up"], "uptime did not grow"
    assert vm.watch.net_conns == 1, "TCP connection was reopened"
    events = [e for e, _ in vm.qmp.events[since:] if e in ("STOP", "RESUME")]
    assert events == ["STOP", "RESUME"] * 2, "events: %s" % events
    diag("pauses together %.1f ms (QMP STOP->RESUME twice), largest "
         "heartbeat gap at the host %.1f ms" % (pause * 1e3, gap * 1e3))


@case
def relay_a_b_a():
    a_b_a(vm.relay)


@case
def relay_refused_stays():
    refused_stays(vm.relay, "relay")


@case
def relay_soak():
    soak_with(lambda binary, i: vm.relay(binary), int(os.environ.get("CPR_RELAY_SOAK", "10")),
              "relayed update")


@case
def reboot_mode_to_build_b():
    """cprsave reboot, quit, no QEMU left, page cache dropped, a fresh
    QEMU of build B with -incoming defer, cprload: the guest goes on
    without rebooting (heartbeats in order, uptime growing, its memory
    check and TCP stream going on); its disks are checked at the end."""
    global vm
    old = vm
    st0 = old.wait_progress()
    mac = linuxvm.tap_mac(old.tap)
    lsock = old.lsock
    old.qmp.cmd("cprsave", file=old.state, mode="reboot")
    st = old.qmp.cmd("query-status")["status"]
    assert st == "paused", "after cprsave reboot the VM is %s" % st
    mode = os.stat(old.state).st_mode & 0o777
    assert mode == 0o600, "state file mode %o" % mode
    old.qmp.cmd("quit")
    deadline = time.monotonic() + 30
    while old.alive():
        assert time.monotonic() < deadline, "QEMU did not quit"
        time.sleep(0.05)
    left = vm_pids()
    assert not left, "QEMU %s still runs the VM" % left
    old.lsock = None            # the guest's TCP stream goes on through it
    old.kill(remove=False)
    linuxvm.drop_caches()

    vm = linuxvm.LinuxVm(binary=QEMU_B, workdir=old.dir, watch=old.watch,
                         incoming="defer", extra=EXTRA)
    vm.lsock = lsock
    linuxvm.readdress_peer(vm.tap, mac)
    t0 = time.monotonic()
    vm.qmp.cmd("cprload", file=vm.state)
    load = time.monotonic() - t0
    st = vm.qmp.cmd("query-status")["status"]
    assert st == "running", "after cprload the VM is %s" % st
    st1 = vm.wait_progress()
    assert st1["up"] > st0["up"], "guest uptime went back: rebooted"
    assert st1["hb"] > st0["hb"]
    diag("restored by %r in %.0f ms (cprload), heartbeat %d -> %d" %
         (version(), load * 1e3, st0["hb"], st1["hb"]))


def pci_ids():
    return linuxvm.pci_ids(vm.qmp.cmd("query-pci"))


def tap_ifindex(name):
    try:
        with open("/sys/class/net/%s/ifindex" % name) as f:
            return int(f.read())
    except FileNotFoundError:
        return None


def getfd(fd, name):
    """QMP getfd: @fd passed over the QMP socket, as libvirt passes a tap."""
    msg = json.dumps({"execute": "getfd", "arguments": {"fdname": name}})
    socket.send_fds(vm.qmp.sock, [msg.encode() + b"\n"], [fd])
    while True:
        resp = vm.qmp._recv()
        if resp is None or "event" not in resp:
            break
    assert resp and "return" in resp, "getfd: %s" % resp


def wait_hot_disk(timeout=60, nic=False):
    """Until the hot-plugged disk's records go on, and with @nic the TCP
    stream over the hot-plugged NIC"""
    return linuxvm.wait_hot(vm.watch, timeout, vm.alive, nic)


@case
def hotplug_disk_and_nic():
    """As libvirt hot-plugs them, over QMP: a qcow2 disk (blockdev-add of
    its file and format nodes, device_add on a root port), which the guest
    finds and writes records to, and a NIC on a tap that the manager
    created and passed with getfd.  Both are carried through an update, a
    transfer and a relayed update (the guest's records on the disk go on,
    the tap is the same interface); then the guest lets the NIC go
    (device_del), its netdev is removed, and an update carries that too.
    The disk's records are checked on its image at the end."""
    img = os.path.join(vm.dir, "hot.qcow2")
    subprocess.run([linuxvm.QEMU_IMG, "create", "-q", "-f", "qcow2", img,
                    "%dM" % linuxvm.DISK_MB], check=True)
    vm.qmp.cmd("blockdev-add", driver="file", filename=img,
               **{"node-name": "hotfile"})
    vm.qmp.cmd("blockdev-add", driver="qcow2", file="hotfile",
               **{"node-name": "hotdisk-fmt"})
    vm.qmp.cmd("device_add", driver="virtio-blk-pci", id="hotdisk",
               drive="hotdisk-fmt", bus="rp1")
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", HOT_TAP.encode(),
                                           IFF_TAP | IFF_NO_PI |
                                           IFF_VNET_HDR))
    getfd(fd, "hotnet-fd")
    os.close(fd)
    vm.qmp.cmd("netdev_add", type="tap", id="hotnet", fd="hotnet-fd")
    vm.qmp.cmd("device_add", driver="virtio-net-pci", id="hotnic",
               netdev="hotnet", bus="rp2")
    ifindex = tap_ifindex(HOT_TAP)
    lsock = linuxvm.start_peer(vm.watch, HOT_TAP, second=True)
    st = wait_hot_disk(nic=True)
    diag("the guest writes to the hot-plugged disk: %d records, and sends "
         "over the hot-plugged NIC: %d records" % (st["vdc"],
                                                   st["net2_host"]))
    vm.hot_disk = img
    for move in (vm.update, vm.transfer, vm.relay):
        move()
        ids = pci_ids()
        assert "hotdisk" in ids and "hotnic" in ids, "devices: %s" % ids
        assert tap_ifindex(HOT_TAP) == ifindex, "the tap was not kept"
        st = wait_hot_disk(nic=True)
    assert vm.watch.net2_conns == 1, "the stream over the hot-plugged NIC " \
        "was reopened"
    diag("after an update, a transfer and a relay: %d records on the "
         "hot-plugged disk, %d over the hot-plugged NIC, one connection" %
         (st["vdc"], st["net2_host"]))
    vm.qmp.cmd("device_del", id="hotnic")
    deadline = time.monotonic() + 60
    # The device is gone from the bus, and finalized: DEVICE_DELETED,
    # which libvirt waits for
    while "hotnic" in pci_ids() or ("DEVICE_DELETED", {
            "device": "hotnic", "path": "/machine/peripheral/hotnic"}) \
            not in vm.qmp.event_data:
        assert time.monotonic() < deadline, "the guest did not let the " \
            "NIC go (PCI devices %s; events %s)" % (pci_ids(),
                                                     vm.qmp.event_data[-5:])
        time.sleep(0.1)
    vm.qmp.cmd("netdev_del", id="hotnet")
    lsock.close()
    assert tap_ifindex(HOT_TAP) is None, "the tap outlived its netdev"
    vm.update()
    ids = pci_ids()
    assert "hotdisk" in ids and "hotnic" not in ids, "devices: %s" % ids
    st = wait_hot_disk()
    diag("after 4 updates: %d records on the hot-plugged disk" % st["vdc"])
    assert not vm.watch.snapshot()["errors"], vm.watch.snapshot()["errors"]


@case
def powerdown_and_disks_intact():
    st = vm.wait_progress()
    vm.powerdown()
    assert vm.watch.poweroff, "guest did not see the power button"
    problems = vm.check_disks()
    hot = getattr(vm, "hot_disk", None)
    if hot:
        problems += linuxvm.check_disk(hot, "qcow2", st["vdc"])
    assert not problems, "; ".join(problems)
    diag("raw: %d records, qcow2: %d records, hot-plugged qcow2: %d "
         "records checked on the images" % (st["vda"], st["vdb"],
                                            st["vdc"]))


if __name__ == "__main__":
    linuxvm.in_netns("cpr-e2e")
    try:
        failed = run(sys.argv[1:])
    finally:
        if vm:
            vm.kill()
        shutil.rmtree(os.path.dirname(BUSY_QMP), ignore_errors=True)
    sys.exit(1 if failed else 0)
