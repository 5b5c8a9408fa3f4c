# SPDX-License-Identifier: GPL-2.0-or-later
"""The Linux test guest (scripts/linux-guest.sh) under QEMU, watched from
the host: its heartbeat on a unix-socket serial port, its status lines on a
pty serial port, its TCP stream to a peer on the tap network, and its two
disks (raw and qcow2).  Shared by tests/e2e and bench/.

Run inside a network namespace of its own (see in_netns()): the tap device
and the peer address live there."""

import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import cprlib

TOP = cprlib.TOP
GUEST_DIR = os.path.join(TOP, "build", "guest", "linux")
QEMU_IMG = os.path.join(TOP, "build", "qemu-img")
PEER_IP = "10.0.2.1"
GUEST_IP = "10.0.2.15"
PEER_PORT = 5000
# The second stream: over a NIC hot-plugged into the guest (its eth1)
PEER2_IP = "10.0.3.1"
GUEST2_IP = "10.0.3.15"
PEER2_PORT = 5001
NET_REC = 64
SECTOR = 512
REC_MAGIC = 0x4345524450524351
DISK_MB = 16
SMP = 4                 # vCPUs of the Linux test guest


def in_netns(name):
    """Re-run this script in a new network namespace unless it already
    runs in one; the namespace goes when the script ends."""
    if os.environ.get("CPR_NETNS"):
        return
    ns = "%s-%d" % (name, os.getpid())
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        env = dict(os.environ, CPR_NETNS=ns)
        rc = subprocess.call(["ip", "netns", "exec", ns, sys.executable]
                             + sys.argv, env=env)
    finally:
        subprocess.run(["ip", "netns", "del", ns])
    sys.exit(rc)


class Watch:
    """What the host sees of the guest.  Every problem lands in errors."""

    def __init__(self):
        self.lock = threading.Lock()
        self.errors = []
        self.hb = -1            # last heartbeat sequence number
        self.hb_time = None     # host time it arrived
        self.gaps = []          # (host time, gap in s) between heartbeats
        self.status = {}        # last "S" line from ttyS0, parsed
        self.pty_status = {}    # last "S" line from ttyS1, parsed
        self.net = 0            # TCP records received in order
        self.net_conns = 0
        self.net2 = 0           # the same, over the hot-plugged NIC
        self.net2_conns = 0
        self.poweroff = False
        self.power_log = []     # "P" and "K" lines after the power button
        self.partial = {}           # port -> line cut by a connection's end
        self.cpu_hb = {}        # CPU -> last sequence number of its heartbeat
        self.cpu_hb_time = {}   # CPU -> host time it arrived
        self.cpu_gaps = []      # (host time, gap in s) between CPU heartbeats
        self.expect_cpus = None     # vCPUs the VM has, if known

    def error(self, msg):
        with self.lock:
            self.errors.append(msg)

    @staticmethod
    def parse_status(line):
        fields = line.split()
        st = {"seq": int(fields[1])}
        for f in fields[2:]:
            k, v = f.split("=")
            st[k] = int(v)
        return st

    def on_serial(self, line):
        now = time.monotonic()
        if line.startswith("H "):
            seq = int(line[2:])
            with self.lock:
                if self.hb >= 0 and seq != self.hb + 1:
                    self.errors.append("heartbeat %d after %d" %
                                       (seq, self.hb))
                if self.hb_time is not None:
                    self.gaps.append((now, now - self.hb_time))
                self.hb, self.hb_time = seq, now
        elif line.startswith("C "):
            cpu, seq = (int(x) for x in line[2:].split())
            with self.lock:
                last = self.cpu_hb.get(cpu)
                if last is not None and seq != last + 1:
                    self.errors.append("CPU %d heartbeat %d after %d" %
                                       (cpu, seq, last))
                if cpu in self.cpu_hb_time:
                    self.cpu_gaps.append((now, now - self.cpu_hb_time[cpu]))
                self.cpu_hb[cpu], self.cpu_hb_time[cpu] = seq, now
        elif line.startswith("S "):
            st = self.parse_status(line)
            with self.lock:
                old = self.status
                if self.expect_cpus and st["cpus"] != self.expect_cpus:
                    self.errors.append("guest has %d CPUs online, the VM %d" %
                                       (st["cpus"], self.expect_cpus))
                if old and st["up"] <= old["up"]:
                    self.errors.append("guest uptime went from %d to %d ms" %
                                       (old["up"], st["up"]))
                # The CMOS RTC follows the host's clock (base=utc).
                if abs(st["rtc"] - time.time()) > 5:
                    self.errors.append("guest RTC is %d, host time %d" %
                                       (st["rtc"], time.time()))
                if st["err"]:
                    self.errors.append("guest reports %d errors" % st["err"])
                self.status = st
        elif line.startswith("E "):
            self.error("guest: " + line[2:])
        elif line.startswith("P ") or line.startswith("K "):
            self.poweroff = True
            with self.lock:
                self.power_log.append(line)

    def on_pty(self, line):
        if not line.startswith("S "):
            return
        st = self.parse_status(line)
        with self.lock:
            old = self.pty_status
            if old and st["seq"] != old["seq"] + 1000:
                self.errors.append("pty status %d after %d" %
                                   (st["seq"], old["seq"]))
            self.pty_status = st

    def power_report(self, wait=20, lines=250):
        """What the guest said after the power button, once its watchdog
        has dumped the kernel log (waits up to @wait s for it): the "P"
        lines and the last @lines "K" lines, one per line."""
        if not self.poweroff:
            return ""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with self.lock:
                if any(l.startswith("K ") for l in self.power_log):
                    break
            time.sleep(0.5)
        time.sleep(2)           # the rest of the dump
        with self.lock:
            p = [l for l in self.power_log if l.startswith("P ")]
            k = [l for l in self.power_log if l.startswith("K ")]
        return "".join("\n    " + l for l in p + k[-lines:])

    def max_gap(self, since, until=None, cpus=False):
        """The largest gap between two heartbeats (with @cpus, between
        two of one CPU's heartbeats, which come every 10 ms) that ended
        after @since and began before @until."""
        with self.lock:
            return max([g for t, g in (self.cpu_gaps if cpus else self.gaps)
                        if t >= since and (until is None or t - g <= until)],
                       default=0.0)

    def snapshot(self):
        with self.lock:
            return dict(self.status, hb=self.hb, net_host=self.net,
                        net2_host=self.net2, cpu_hb=dict(self.cpu_hb),
                        errors=list(self.errors))


def _read_lines(f, handler, watch, what):
    """Feed @handler each line read from @f until its end.  A line cut by
    the end of a connection is finished by the next connection to the
    same port (@what): after a reboot-mode restore, the rest of it comes
    from the UART state the fresh QEMU loaded."""
    buf = None
    while True:
        try:
            data = f.read(65536) if hasattr(f, "read") else f.recv(65536)
        except OSError:
            data = b""
        if buf is None:
            with watch.lock:
                buf = watch.partial.pop(what, b"")
        if not data:
            if buf:
                with watch.lock:
                    watch.partial[what] = buf
            return
        buf += data
        *lines, buf = buf.split(b"\n")
        for line in lines:
            try:
                handler(line.decode(errors="replace").rstrip("\r"))
            except (ValueError, IndexError):
                watch.error("%s: bad line %r" % (what, line))


def _net_peer(lsock, watch, key):
    """Count the records of the guest's stream @key ("net", "net2") in
    watch.<key>; the stream over a hot-plugged NIC may end (the NIC goes)
    and start again."""
    while True:
        try:
            conn, _ = lsock.accept()
        except OSError:
            return
        with watch.lock:
            conns = getattr(watch, key + "_conns") + 1
            setattr(watch, key + "_conns", conns)
            if conns > 1 and key == "net":
                watch.errors.append("guest opened TCP connection %d" %
                                    conns)
        buf = b""
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                data = b""
            if not data:
                if not watch.poweroff and key == "net":
                    watch.error("guest TCP connection closed after %d "
                                "records" % watch.net)
                break
            buf += data
            n = len(buf) // NET_REC
            with watch.lock:
                for i in range(n):
                    seq = struct.unpack_from("<Q", buf, i * NET_REC)[0]
                    if seq != getattr(watch, key):
                        watch.errors.append("%s: TCP record %d, expected %d"
                                            % (key, seq,
                                               getattr(watch, key)))
                    setattr(watch, key, seq + 1)
            buf = buf[n * NET_REC:]
        conn.close()


def check_disk(path, fmt, written, slack=5000, in_use=False):
    """Every record the guest reported as written must be on the image:
    record r goes to sector r % nsect, so sector s holds the newest record
    r with r % nsect == s; the guest may have written up to slack records
    after its last report.  @in_use: a stopped QEMU still has it open."""
    raw = path
    if fmt != "raw":
        raw = path + ".raw"
        subprocess.run([QEMU_IMG, "convert"] + (["-U"] if in_use else []) +
                       ["-f", fmt, "-O", "raw", path, raw], check=True)
    with open(raw, "rb") as f:
        data = f.read()
    if raw != path:
        os.unlink(raw)
    nsect = len(data) // SECTOR
    problems = []
    for s in range(min(nsect, written)):
        want = s + (written - 1 - s) // nsect * nsect
        magic, seq, sector = struct.unpack_from("<QQQ", data, s * SECTOR)
        if (magic != REC_MAGIC or sector != s or seq % nsect != s or
                not want <= seq < written + slack):
            problems.append("sector %d: magic %x seq %d, expected %d" %
                            (s, magic, seq, want))
        else:
            body = bytes((seq * 31 + i) & 0xff for i in range(24, SECTOR))
            if data[s * SECTOR + 24:(s + 1) * SECTOR] != body:
                problems.append("sector %d: record %d body differs" %
                                (s, seq))
        if len(problems) > 5:
            break
    return problems


def start_peer(watch, tap, second=False):
    """Give the host end of @tap the peer address and accept the guest's
    TCP stream there (with @second, the stream over the NIC the host
    hot-plugs).  Returns the listening socket."""
    ip, port = (PEER2_IP, PEER2_PORT) if second else (PEER_IP, PEER_PORT)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "addr", "add", "%s/24" % ip, "dev", tap],
                   check=True)
    subprocess.run(["ip", "link", "set", tap, "up"], check=True)
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((ip, port))
    lsock.listen(1)
    threading.Thread(target=_net_peer, daemon=True,
                     args=(lsock, watch, "net2" if second else "net")).start()
    return lsock


def tap_mac(tap):
    with open("/sys/class/net/%s/address" % tap) as f:
        return f.read().strip()


def readdress_peer(tap, mac):
    """After QEMU created @tap anew (a restore in a fresh QEMU), give its
    host end the peer address and the MAC address it had, so that the
    guest's TCP stream to the peer goes on."""
    subprocess.run(["ip", "link", "set", tap, "address", mac], check=True)
    subprocess.run(["ip", "addr", "add", "%s/24" % PEER_IP, "dev", tap],
                   check=True)
    subprocess.run(["ip", "link", "set", tap, "up"], check=True)


def drop_caches():
    """Nothing read afterwards comes from the page cache, as after a
    host reboot."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def attach_serial(watch, path, timeout=30):
    """Read the heartbeat from the unix-socket serial port at @path."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            break
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    threading.Thread(target=_read_lines, daemon=True,
                     args=(sock, watch.on_serial, watch, "ttyS0")).start()
    return sock


def attach_pty(watch, path):
    """Read the status lines from the pty serial port at @path."""
    pty = open(os.open(path, os.O_RDONLY | os.O_NOCTTY), "rb", buffering=0)
    subprocess.run(["stty", "-F", path, "raw", "-echo"], check=True)
    threading.Thread(target=_read_lines, daemon=True,
                     args=(pty, watch.on_pty, watch, "ttyS1")).start()
    return pty


def wait_watch(watch, timeout, alive, net=True,
               parts=("mem", "vda", "vdb")):
    """Wait until the guest's heartbeat, every CPU's heartbeat, pty status
    line, memory and disk counters and (with @net) the host's count of TCP
    records all move past where they are now.  Returns the new snapshot."""
    base = watch.snapshot()
    base_pty = watch.pty_status.get("seq", -1)
    deadline = time.monotonic() + timeout
    while True:
        cur = watch.snapshot()
        cpus = range(cur.get("cpus", 0))
        if (cur["hb"] > base["hb"] + 1100 and cpus and
                all(cur["cpu_hb"].get(c, -1) > base["cpu_hb"].get(c, -1) + 50
                    for c in cpus) and
                all(cur.get(p, 0) > base.get(p, 0) for p in parts) and
                (not net or cur["net_host"] > base["net_host"]) and
                watch.pty_status.get("seq", -1) > base_pty):
            return cur
        if not alive():
            raise cprlib.QmpError("the QEMU process is gone")
        if time.monotonic() > deadline:
            raise cprlib.QmpError("guest made no progress: %s -> %s" %
                                  (base, cur))
        time.sleep(0.05)


def wait_hot(watch, timeout, alive, nic):
    """wait_watch() until the records on the hot-plugged disk (vdc) go on
    too, and with @nic the TCP stream over the hot-plugged NIC."""
    return wait_watch(watch, timeout, alive,
                      parts=("mem", "vda", "vdb", "vdc") +
                      (("net2", "net2_host") if nic else ()))


def pci_ids(query_pci):
    """The qdev ids in a query-pci answer, behind bridges too."""
    ids = []

    def walk(devices):
        for d in devices:
            ids.append(d.get("qdev_id"))
            walk(d.get("pci_bridge", {}).get("devices", []))
    for bus in query_pci:
        walk(bus["devices"])
    return ids


def make_disks(workdir):
    """The raw and the qcow2 image the workload writes records to."""
    paths = []
    for name, fmt in (("disk.raw", "raw"), ("disk.qcow2", "qcow2")):
        path = os.path.join(workdir, name)
        subprocess.run([QEMU_IMG, "create", "-q", "-f", fmt, path,
                        "%dM" % DISK_MB], check=True)
        paths.append(path)
    return paths


def kernel_cmdline(guest_mem_mb, peer):
    # initcall_debug: the kernel log names each device it shuts down
    # (the workload dumps it when a power-off hangs)
    append = ("console=ttyS0 loglevel=1 initcall_debug cpr.mem=%d "
              "cpr.ip=%s/24" %
              (guest_mem_mb, GUEST_IP))
    if peer:
        append += " cpr.peer=%s:%d" % (PEER_IP, PEER_PORT)
        append += " cpr.peer2=%s:%d cpr.ip2=%s/24" % (PEER2_IP, PEER2_PORT,
                                                      GUEST2_IP)
    return append


def plain_args(mem_mb, serial_path, qmp_path, smp=SMP):
    """QEMU on the Linux test guest alone, under TCG: no disks, no
    network, its heartbeat on a unix-socket serial port (the snapshot
    test and benchmark)."""
    return [cprlib.QEMU, "-machine", "q35", "-accel", "tcg",
            "-m", str(mem_mb), "-smp", str(smp), "-display", "none",
            "-nodefaults",
            "-rtc", "clock=vm",
            "-kernel", os.path.join(GUEST_DIR, "vmlinuz"),
            "-initrd", os.path.join(GUEST_DIR, "initrd.img"),
            "-append", "console=ttyS0 loglevel=1 cpr.mem=16",
            "-chardev", "socket,id=ser0,path=%s,server=on,wait=off" %
            serial_path, "-serial", "chardev:ser0",
            "-qmp", "unix:%s,server=on,wait=off" % qmp_path]


class LinuxVm:
    """QEMU running the Linux test guest with tap networking, a raw and a
    qcow2 virtio disk, the heartbeat on a unix-socket serial port and status
    lines on a pty serial port, watched from the moment QEMU is up.
    Started paused (or incoming); start() resumes."""

    def __init__(self, binary=cprlib.QEMU, mem_mb=1024, accel="tcg",
                 guest_mem_mb=64, extra=(), tap="cprtap0", peer=True,
                 name="vm", workdir=None, watch=None, incoming=None,
                 machine="q35,memfd-alloc=on", smp=SMP):
        """@peer: the guest streams to the host peer, which this VM runs
        (on @tap) unless it is the destination of a migration
        (@incoming); @workdir, @watch: the disks and the watchers of
        another LinuxVm, for a migration destination."""
        self.dir = workdir or tempfile.mkdtemp(
            prefix="cpr-linux-", dir=os.path.join(TOP, "build"))
        self.qmp_path = os.path.join(self.dir, name + "-qmp.sock")
        self.serial_path = os.path.join(self.dir, name + "-serial0.sock")
        self.state = os.path.join(self.dir, "vm.cpr")
        self.tap = tap
        self.watch = watch or Watch()
        self.watch.expect_cpus = smp
        self.raw = os.path.join(self.dir, "disk.raw")
        self.qcow2 = os.path.join(self.dir, "disk.qcow2")
        if not workdir:
            make_disks(self.dir)
        append = kernel_cmdline(guest_mem_mb, peer)
        self.lsock = None
        self.args = [
            binary, "-machine", machine, "-accel", accel,
            "-m", str(mem_mb), "-smp", str(smp), "-display", "none",
            "-kernel", os.path.join(GUEST_DIR, "vmlinuz"),
            "-initrd", os.path.join(GUEST_DIR, "initrd.img"),
            "-append", append,
            "-chardev", "socket,id=ser0,path=%s,server=on,wait=off" %
            self.serial_path,
            "-serial", "chardev:ser0",
            "-chardev", "pty,id=ser1", "-serial", "chardev:ser1",
            "-netdev", "tap,id=net0,ifname=%s,script=no,downscript=no" % tap,
            "-device", "virtio-net-pci,netdev=net0",
            "-blockdev", "file,node-name=f0,filename=%s" % self.raw,
            "-blockdev", "raw,node-name=d0,file=f0",
            "-device", "virtio-blk-pci,drive=d0",
            "-blockdev", "file,node-name=f1,filename=%s" % self.qcow2,
            "-blockdev", "qcow2,node-name=d1,file=f1",
            "-device", "virtio-blk-pci,drive=d1",
            "-qmp", "unix:%s,server=on,wait=off" % self.qmp_path,
        ] + (["-incoming", incoming] if incoming else ["-S"]) + list(extra)
        self.proc = subprocess.Popen(self.args)
        self.pid = self.proc.pid
        self.qmp = cprlib.Qmp(self.qmp_path, self.proc)
        if peer and not incoming:
            self.lsock = start_peer(self.watch, tap)
        self.serial = attach_serial(self.watch, self.serial_path)
        pty = None
        for c in self.qmp.cmd("query-chardev"):
            if c["label"] == "ser1":
                pty = c["filename"].split(":", 1)[1]
        self.pty = attach_pty(self.watch, pty)

    def start(self, timeout=120):
        """Resume and wait until every part of the workload makes
        progress."""
        self.qmp.cmd("cont")
        self.wait_progress(timeout)

    def wait_progress(self, timeout=60):
        return wait_watch(self.watch, timeout, self.alive,
                          net=self.lsock is not None)

    def update(self, binary=None):
        """Live update; returns (QMP pause, largest heartbeat gap seen by
        the host around it) in seconds."""
        t0 = time.monotonic()
        pause = cprlib.cpr_update(self, binary)
        self.wait_progress()
        return pause, self.watch.max_gap(t0)

    def transfer(self, binary=None, extra=()):
        """Live update by cprsave transfer to a new QEMU (@binary, with
        @extra arguments); returns (QMP pause, largest heartbeat gap seen by
        the host around it) in seconds."""
        sock = os.path.join(self.dir, "cpr.sock")
        new = cprlib.start_incoming(self.args, sock, binary, extra)
        t0 = time.monotonic()
        try:
            pause = cprlib.cpr_transfer(self, new, sock)
        finally:
            if new is not self.proc:
                new.kill()
                new.wait()
        self.wait_progress()
        return pause, self.watch.max_gap(t0)

    def relay(self, binary=None):
        """Live update by cprsave restart with relay (same PID); returns
        (both QMP pauses together, largest heartbeat gap seen by the host
        around it) in seconds."""
        t0 = time.monotonic()
        pauses = cprlib.cpr_relay(self, binary)
        self.wait_progress()
        return sum(pauses), self.watch.max_gap(t0)

    def alive(self):
        if self.pid == self.proc.pid:
            return self.proc.poll() is None
        # A VM taken back after a failed update is not our child: once it
        # exits it may stay a zombie if nothing reaps it.
        try:
            with open("/proc/%d/stat" % self.pid) as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False

    def fd_count(self):
        return len(os.listdir("/proc/%d/fd" % self.pid))

    def rss_kb(self):
        """(RssAnon, VmRSS) of the QEMU process in KiB."""
        vals = {}
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                m = re.match(r"(RssAnon|VmRSS):\s+(\d+)", line)
                if m:
                    vals[m.group(1)] = int(m.group(2))
        return vals["RssAnon"], vals["VmRSS"]

    def powerdown(self, timeout=60):
        """ACPI power button; the workload powers the guest off and QEMU
        exits."""
        self.qmp.cmd("system_powerdown")
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                raise cprlib.QmpError(
                    "guest did not power off (power button %s, QEMU %d "
                    "still running)%s" % ("seen" if self.watch.poweroff
                                          else "not seen", self.pid,
                                          self.watch.power_report()))
            time.sleep(0.05)

    def check_disks(self):
        st = self.watch.snapshot()
        return (check_disk(self.raw, "raw", st.get("vda", 0)) +
                check_disk(self.qcow2, "qcow2", st.get("vdb", 0)))

    def kill(self, remove=True):
        """End QEMU and the watchers; @remove: and delete the directory
        (not for the source of a migration whose destination uses it)."""
        self.qmp.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        # A VM taken back by the helper after a failed update is not our
        # child: find it by its QMP socket in its command line.
        for pid in os.listdir("/proc"):
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as f:
                    if self.qmp_path.encode() in f.read():
                        os.kill(int(pid), 9)
            except (OSError, ValueError):
                pass
        for sock in (self.serial, self.lsock):
            if sock:
                sock.close()
        self.pty.close()
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)
