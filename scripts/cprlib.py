# SPDX-License-Identifier: GPL-2.0-or-later
"""Small helpers shared by the demo and the benchmarks: start QEMU on the
test guest, talk QMP over a unix socket (reconnecting across cprsave), and
read the guest's page counters."""

import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# CPR_QEMU: another build of QEMU to test (the sanitizer suite's)
QEMU = os.environ.get("CPR_QEMU") or os.path.join(TOP, "build",
                                                  "qemu-system-x86_64")
GUEST = os.path.join(TOP, "build", "guest", "cpr-guest.img")
COUNTER_START = 2 << 20


class QmpError(Exception):
    pass


class Qmp:
    """A QMP client that keeps the events it sees, with their timestamps."""

    def __init__(self, path, proc, timeout=60):
        self.path = path
        self.proc = proc
        self.events = []
        self.event_data = []    # (name, data) of each event, in order
        self.sock = None
        self.buf = b""
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise QmpError("QEMU exited with status %d" % proc.returncode)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                self.sock = s
                greeting = self._recv()
                if greeting is not None and "QMP" in greeting:
                    break
            except OSError:
                pass
            s.close()
            self.sock = None
            self.buf = b""
            if time.monotonic() > deadline:
                raise QmpError("cannot connect to %s" % path)
            time.sleep(0.001)
        self.cmd("qmp_capabilities")

    def _recv(self):
        while b"\n" not in self.buf:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                return None
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def cmd(self, name, /, **args):
        """Run a command; None if the connection ended (cprsave)."""
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            resp = self._recv()
            if resp is None:
                return None
            if "event" in resp:
                ts = resp["timestamp"]
                self.events.append((resp["event"],
                                    ts["seconds"] + ts["microseconds"] / 1e6))
                self.event_data.append((resp["event"], resp.get("data", {})))
                continue
            if "error" in resp:
                raise QmpError("%s: %s" % (name, resp["error"]["desc"]))
            return resp["return"]

    def hmp(self, line):
        """Run a human monitor command; its output."""
        return self.cmd("human-monitor-command", **{"command-line": line})

    def event_time(self, name):
        for ev, t in reversed(self.events):
            if ev == name:
                return t
        raise QmpError("no %s event" % name)

    def wait_event(self, name, since=0, timeout=30):
        """The time of the first @name event from self.events[@since] on,
        reading events until it comes."""
        deadline = time.monotonic() + timeout
        while True:
            for ev, t in self.events[since:]:
                if ev == name:
                    return t
            if time.monotonic() > deadline:
                raise QmpError("no %s event" % name)
            self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                resp = self._recv()
            except socket.timeout:
                resp = {}
            finally:
                self.sock.settimeout(None)
            if resp is None:
                raise QmpError("the QMP connection was lost")
            if "event" in resp:
                ts = resp["timestamp"]
                self.events.append((resp["event"],
                                    ts["seconds"] + ts["microseconds"] / 1e6))
                self.event_data.append((resp["event"], resp.get("data", {})))

    def close(self):
        if self.sock:
            self.sock.close()
            self.sock = None


class Vm:
    """QEMU running the test guest, in a private temporary directory;
    @disk_opts: more options of its boot disk's -drive; @stdout: where
    QEMU's standard output goes (a file, or inherited)."""

    def __init__(self, mem_mb, machine="q35,memfd-alloc=on", accel="tcg",
                 extra=(), incoming=None, workdir=None, disk_opts="",
                 stdout=None):
        self.dir = workdir or tempfile.mkdtemp(prefix="cpr-")
        self.qmp_path = os.path.join(self.dir, "qmp.sock")
        self.serial = os.path.join(self.dir, "serial.log")
        self.state = os.path.join(self.dir, "vm.cpr")
        disk = os.path.join(self.dir, "disk.img")
        if not os.path.exists(disk):
            with open(GUEST, "rb") as src, open(disk, "wb") as dst:
                dst.write(src.read())
        args = [QEMU, "-machine", machine, "-accel", accel,
                "-m", str(mem_mb), "-display", "none",
                "-drive", "file=%s,format=raw%s" % (disk, disk_opts),
                "-serial", "file:" + self.serial,
                "-qmp", "unix:%s,server=on,wait=off" % self.qmp_path]
        if incoming:
            args += ["-incoming", incoming]
        args += list(extra)
        self.proc = subprocess.Popen(args, stdout=stdout)
        self.pid = self.proc.pid
        self.qmp = Qmp(self.qmp_path, self.proc)

    def reconnect(self):
        self.qmp.close()
        self.qmp = Qmp(self.qmp_path, self.proc)

    def passes(self):
        try:
            return os.path.getsize(self.serial)
        except OSError:
            return 0

    def wait_passes(self, n, timeout=600):
        target = self.passes() + n
        deadline = time.monotonic() + timeout
        while self.passes() < target:
            if time.monotonic() > deadline:
                raise QmpError("guest made no progress")
            time.sleep(0.01)

    def counters(self, pages):
        path = os.path.join(self.dir, "mem")
        self.qmp.cmd("pmemsave", val=COUNTER_START, size=pages * 4096,
                     filename=path)
        with open(path, "rb") as f:
            data = f.read()
        os.unlink(path)
        return [struct.unpack_from("<Q", data, i * 4096)[0]
                for i in range(pages)]

    def status(self):
        return self.qmp.cmd("query-status")["status"]

    def kill(self):
        self.qmp.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for name in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, name))
        os.rmdir(self.dir)


def wait_migration(qmp, timeout=600):
    """Wait until the migration this QEMU runs (or receives) completes."""
    deadline = time.monotonic() + timeout
    while True:
        st = qmp.cmd("query-migrate").get("status")
        if st == "completed":
            return
        if st in ("failed", "cancelled") or time.monotonic() > deadline:
            raise QmpError("migration " + str(st))
        time.sleep(0.005)


def cpr_update(vm, binary=None, auto_load=False):
    """cprsave restart + cprload on the same QMP connection, which the new
    process keeps (with @auto_load: cprsave alone, the new process loads
    by itself).  Returns the pause in seconds from the old process's STOP
    event to the new process's RESUME event."""
    args = {"file": vm.state, "mode": "restart"}
    if binary:
        args["binary"] = binary
    if auto_load:
        args["auto-load"] = True
    if vm.qmp.cmd("cprsave", **args) is None:
        raise QmpError("the QMP connection was lost at cprsave")
    stop = vm.qmp.event_time("STOP")
    if not auto_load:
        vm.qmp.cmd("cprload", file=vm.state)
    return vm.qmp.event_time("RESUME") - stop


def cpr_relay(vm, binary=None):
    """cprsave restart with relay on @vm's QMP connection, which the new
    binary in the same PID answers.  Returns the two pauses in seconds
    (STOP -> RESUME: the relay process takes the VM, then this PID's new
    binary takes it back)."""
    since = len(vm.qmp.events)
    args = {"mode": "restart", "relay": True}
    if binary:
        args["binary"] = binary
    if vm.qmp.cmd("cprsave", **args) is None:
        raise QmpError("the QMP connection was lost at cprsave")
    pauses = []
    for _ in range(2):
        stop = vm.qmp.wait_event("STOP", since)
        since = next(i for i in range(since, len(vm.qmp.events))
                     if vm.qmp.events[i][0] == "STOP") + 1
        resume = vm.qmp.wait_event("RESUME", since)
        since = next(i for i in range(since, len(vm.qmp.events))
                     if vm.qmp.events[i][0] == "RESUME") + 1
        pauses.append(resume - stop)
    return pauses


def wait_gone(pid, timeout=60):
    """Wait until process @pid, which is not our child, has exited."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open("/proc/%d/stat" % pid) as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except (OSError, IndexError):
            return
        if time.monotonic() > deadline:
            raise QmpError("process %d did not exit" % pid)
        time.sleep(0.005)


def start_incoming(args, sock, binary=None, extra=()):
    """Start the new QEMU of a transfer: @args (a QEMU command line; -S
    dropped), with @binary instead of args[0], plus @extra and -incoming
    cpr:unix:@sock.  Returns its Popen once it listens."""
    if os.path.exists(sock):
        os.unlink(sock)
    argv = [binary or args[0]] + [a for a in args[1:] if a != "-S"] + \
        list(extra) + ["-incoming", "cpr:unix:" + sock]
    proc = subprocess.Popen(argv)
    deadline = time.monotonic() + 60
    while not os.path.exists(sock):
        if proc.poll() is not None:
            raise QmpError("the new QEMU exited with status %d before it "
                           "listened" % proc.returncode)
        if time.monotonic() > deadline:
            proc.kill()
            raise QmpError("the new QEMU does not listen on " + sock)
        time.sleep(0.002)
    return proc


def cpr_transfer(vm, new, sock, resumes=True):
    """cprsave transfer from @vm's QEMU to @new (start_incoming on @sock),
    on the same QMP connection, which the new process answers; the old
    process exits.  @vm gets the new process.  Returns the pause in
    seconds from the old process's STOP event to the new one's RESUME
    (None when the VM does not resume)."""
    since = len(vm.qmp.events)
    if vm.qmp.cmd("cprsave", mode="transfer",
                  channel="unix:" + sock) is None:
        raise QmpError("the QMP connection was lost at cprsave")
    if vm.proc.pid == vm.pid:
        if vm.proc.wait(timeout=60) != 0:
            raise QmpError("the old QEMU exited with status %d" %
                           vm.proc.returncode)
    else:
        wait_gone(vm.pid)       # not our child (a VM taken back)
    vm.proc = vm.qmp.proc = new
    vm.pid = new.pid
    if not resumes:
        return None
    stop = vm.qmp.wait_event("STOP", since)
    return vm.qmp.wait_event("RESUME", since) - stop


def console_lines(args, log_name):
    """Run QEMU with @args (its serial port on stdout) until it exits;
    yield each line of its console, which also goes to build/@log_name."""
    with open(os.path.join(TOP, "build", log_name), "w") as log, \
            subprocess.Popen(args, stdout=subprocess.PIPE,
                             stdin=subprocess.DEVNULL) as proc:
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            log.write(line + "\n")
            log.flush()
            yield line


def l1_args(machine, append, extra=()):
    """QEMU's arguments for the L1 guest of scripts/vfio-l1.sh (TCG,
    2 GiB, its console on stdout): @machine, kernel arguments @append
    after the console's, @extra arguments"""
    l1 = os.path.join(TOP, "build", "guest", "vfio-l1")
    return [os.path.join(TOP, "build", "qemu-system-x86_64"),
            "-machine", machine, "-accel", "tcg", "-m", "2048",
            "-display", "none", "-nodefaults", "-no-reboot",
            "-kernel", os.path.join(l1, "vmlinuz"),
            "-initrd", os.path.join(l1, "initrd.img"),
            "-append", "console=ttyS0 loglevel=3 " + append,
            "-serial", "stdio"] + list(extra)


def relay_l1_tap(args, log_name):
    """Run the L1 guest with @args until it exits, printing the TAP lines
    of its console (the rest goes to build/@log_name); 0 if the plan
    it printed was run and every test passed."""
    tap = re.compile(r"^(TAP version|1\.\.\d+|ok \d|not ok \d|# )")
    plan = None
    oks = 0
    bad = 0
    for line in console_lines(args, log_name):
        if not tap.match(line):
            continue
        print(line, flush=True)
        if line.startswith("1.."):
            plan = int(line[3:])
        elif line.startswith("ok "):
            oks += 1
        elif line.startswith("not ok "):
            bad += 1
    if plan is None or oks + bad != plan:
        print("# L1 ended after %d of %s tests; see build/%s"
              % (oks + bad, plan, log_name))
        return 1
    return 1 if bad else 0


class Tap:
    """TAP version 14 for a test script: @case registers a function as a
    test (named after it), run() runs them all in order, a failing one
    reported with its message and the rest run (or, with @stop, none
    after it: each case needs the one before).  @check, if given, is
    called after each case that passed and returns what went wrong
    meanwhile (a list of messages), which fails the case."""

    def __init__(self, check=None, stop=False):
        self.cases = []
        self.check = check
        self.stop = stop

    def case(self, fn):
        self.cases.append(fn)
        return fn

    @staticmethod
    def diag(msg):
        print("# " + msg, flush=True)

    def run(self):
        """1 if a case failed, else 0."""
        print("TAP version 14")
        print("1..%d" % len(self.cases), flush=True)
        failed = 0
        for i, fn in enumerate(self.cases, 1):
            name = fn.__name__.replace("_", "-")
            try:
                fn()
                errs = self.check() if self.check else []
                if errs:
                    raise AssertionError("; ".join(errs[:5]))
                print("ok %d - %s" % (i, name), flush=True)
            except Exception as e:  # report and go on
                failed = 1
                print("not ok %d - %s" % (i, name))
                for line in str(e).splitlines() or [type(e).__name__]:
                    self.diag(line)
                sys.stdout.flush()
                if self.stop:
                    break
        return failed


def kvm_works():
    """Whether this QEMU can start with KVM on this host."""
    try:
        return subprocess.run(
            [QEMU, "-accel", "kvm", "-machine", "none", "-display",
             "none", "-nodefaults", "-monitor", "stdio"], input=b"quit\n",
            capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def bench_accels():
    """Accelerators a benchmark runs with: CPR_BENCH_ACCELS (comma
    separated), or TCG and, where it works, KVM."""
    accels = os.environ.get("CPR_BENCH_ACCELS")
    return accels.split(",") if accels else \
        ["tcg"] + (["kvm"] if kvm_works() else [])
