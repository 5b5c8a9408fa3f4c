#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Live update of the Linux test guest (two vCPUs) managed by Debian's
libvirt: the domain's <emulator> is our QEMU, its XML is otherwise
libvirt's default (guest RAM in anonymous memory, which the first
cprsave moves into memfds), the update is cprsave +
cprload through "virsh qemu-monitor-command" (also with auto-load, and
through a relay process), a disk and a NIC attached with "virsh
attach-device" are carried across updates, and
virsh keeps working on the updated process.  Prints TAP.

Runs its own libvirtd, virtlogd and dbus-daemon in a network namespace
and a mount namespace of its own, over private copies of /etc/libvirt and
libvirt's run, state, cache and log directories, so the host's libvirt
(if any) is neither used nor changed.  Needs root and the libvirt packages
scripts/deps.sh installs."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "..", "scripts"))
import cprlib  # noqa: E402
import linuxvm  # noqa: E402

DOMAIN = "cpr-e2e"
TAP = "cprtap1"
HOT_TAP = "cprtap6"
# What libvirt needs to let QEMU exec itself and hand over its descriptors;
# docs/cpr.rst explains each line.
QEMU_CONF = """
user = "root"
group = "root"
security_driver = "none"
namespaces = [ ]
cgroup_controllers = [ ]
seccomp_sandbox = 0
"""
PRIVATE_DIRS = ["/etc/libvirt", "/run/libvirt", "/var/lib/libvirt",
                "/var/cache/libvirt", "/var/log/libvirt", "/run/dbus"]

results = []
work = None
watch = None
hot_disk = None                 # the image of the disk attached live
pause_ms = []


def diag(msg):
    print("# " + msg, flush=True)


def case(fn):
    results.append(fn)
    return fn


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True,
                          **kw).stdout


def virsh(*args):
    return run(["virsh", "-q", "-c", "qemu:///system"] + list(args)).strip()


def monitor(cmd, **args):
    msg = {"execute": cmd}
    if args:
        msg["arguments"] = args
    out = json.loads(virsh("qemu-monitor-command", DOMAIN, json.dumps(msg)))
    if "error" in out:
        raise cprlib.QmpError("%s: %s" % (cmd, out["error"]["desc"]))
    return out["return"]


def private_libvirt():
    """Bind-mount private copies of libvirt's directories (this process
    runs in a mount namespace of its own) and start the daemons."""
    for d in PRIVATE_DIRS:
        copy = os.path.join(work, "root" + d.replace("/", "_"))
        if d == "/etc/libvirt":
            shutil.copytree(d, copy, symlinks=True)
        else:
            os.makedirs(copy)
        os.makedirs(d, exist_ok=True)
        run(["mount", "--bind", copy, d])
    with open("/etc/libvirt/qemu.conf", "a") as f:
        f.write(QEMU_CONF)
    run(["dbus-daemon", "--system", "--fork"])
    run(["virtlogd", "-d"])
    run(["libvirtd", "-d"])
    deadline = time.monotonic() + 60
    while not os.path.exists("/run/libvirt/libvirt-sock"):
        if time.monotonic() > deadline:
            raise AssertionError("libvirtd did not come up")
        time.sleep(0.1)


def stop_daemons():
    for pidfile in ("/run/libvirtd.pid", "/run/virtlogd.pid",
                    "/run/dbus/pid", "/run/libvirt/libvirtd.pid"):
        try:
            with open(pidfile) as f:
                os.kill(int(f.read().strip()), 9)
        except (OSError, ValueError):
            pass


def domain_xml():
    g = linuxvm.GUEST_DIR
    return """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>1024</memory>
  <vcpu>{smp}</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{g}/vmlinuz</kernel>
    <initrd>{g}/initrd.img</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>{qemu}</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{w}/disk.raw'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{w}/disk.qcow2'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <interface type='ethernet'>
      <target dev='{tap}' managed='yes'/>
      <model type='virtio'/>
      <driver name='qemu'/>
    </interface>
    <serial type='unix'>
      <source mode='bind' path='{w}/serial0.sock'/>
      <target port='0'/>
    </serial>
    <serial type='pty'>
      <target port='1'/>
    </serial>
    <serial type='file'>
      <source path='{w}/serial2.log'/>
      <target port='2'/>
    </serial>
    <video><model type='none'/></video>
    <memballoon model='none'/>
    <controller type='pci' index='0' model='pcie-root'/>
{ports}  </devices>
</domain>
""".format(name=DOMAIN, g=g, w=work, tap=TAP, qemu=cprlib.QEMU,
           smp=linuxvm.SMP,
           # Root ports for the disks and NIC (libvirt puts each in one)
           # and free ones for the devices attached later
           ports="    <controller type='pci' model='pcie-root-port'/>\n" * 6,
           cmdline=linuxvm.kernel_cmdline(64, True))


def qemu_pid():
    with open("/run/libvirt/qemu/%s.pid" % DOMAIN) as f:
        return int(f.read())


def qemu_log_tail(n):
    """The last @n lines QEMU wrote to the log libvirt keeps for it."""
    try:
        with open("/var/log/libvirt/qemu/%s.log" % DOMAIN) as f:
            return f.read().splitlines()[-n:]
    except OSError as e:
        return [str(e)]


def errors():
    return watch.snapshot()["errors"]


@case
def start_domain():
    global watch
    linuxvm.make_disks(work)
    with open(os.path.join(work, "domain.xml"), "w") as f:
        f.write(domain_xml())
    virsh("define", os.path.join(work, "domain.xml"))
    virsh("start", "--paused", DOMAIN)
    watch = linuxvm.Watch()
    watch.expect_cpus = linuxvm.SMP
    linuxvm.start_peer(watch, TAP)
    linuxvm.attach_serial(watch, os.path.join(work, "serial0.sock"))
    pty = None
    for c in monitor("query-chardev"):
        if c["label"] == "charserial1":
            pty = c["filename"].split(":", 1)[1]
    linuxvm.attach_pty(watch, pty)
    virsh("resume", DOMAIN)
    linuxvm.wait_watch(watch, 120, alive=lambda: True)
    args = open("/proc/%d/cmdline" % qemu_pid()).read().split("\0")
    diag("libvirt passed: " + " ".join(
        a for a in args if a.startswith(("set=", "socket,")) or
        '"tap"' in a or "fdset" in a))
    assert virsh("domstate", DOMAIN) == "running"


def check_updated(pid, before, t0):
    """After an update started at @t0 (heartbeats @before): the domain
    runs in the same QEMU process @pid and the guest goes on; the largest
    heartbeat gap at the host since @t0, in ms."""
    assert virsh("domstate", DOMAIN) == "running", "domstate"
    assert monitor("query-status")["status"] == "running"
    assert qemu_pid() == pid, "QEMU PID changed"
    after = linuxvm.wait_watch(watch, 60, alive=lambda: True)
    assert after["up"] > before["up"], "uptime did not grow"
    return watch.max_gap(t0) * 1e3


@case
def update_through_virsh():
    pid = qemu_pid()
    state = os.path.join(work, "vm.cpr")
    log = os.path.join(work, "serial2.log")
    log_size = os.path.getsize(log)
    # Two updates with cprload through a second virsh call, two with
    # auto-load (the new process loads the state by itself).
    for i in range(4):
        auto = i >= 2
        t0 = time.monotonic()
        before = watch.snapshot()
        if auto:
            monitor("cprsave", file=state, mode="restart",
                    **{"auto-load": True})
        else:
            monitor("cprsave", file=state, mode="restart")
            monitor("cprload", file=state)
        pause_ms.append(check_updated(pid, before, t0))
    diag("largest heartbeat gap at the host per update, ms: with cprload "
         "%s; with auto-load %s" %
         (", ".join("%.1f" % p for p in pause_ms[:2]),
          ", ".join("%.1f" % p for p in pause_ms[2:])))
    info = virsh("dominfo", DOMAIN)
    assert "running" in info, info
    # The serial log that libvirt passed with -add-fd keeps growing.
    time.sleep(0.5)
    assert os.path.getsize(log) > log_size, "serial log stopped"
    assert not errors(), "; ".join(errors()[:5])


@case
def relay_through_virsh():
    """cprsave restart with relay: libvirt's pid file, monitor socket,
    tap, disks, consoles and serial log file through a relay process and
    back into the same PID."""
    pid = qemu_pid()
    log = os.path.join(work, "serial2.log")
    log_size = os.path.getsize(log)
    gaps = []
    for _ in range(2):
        t0 = time.monotonic()
        before = watch.snapshot()
        monitor("cprsave", mode="restart", relay=True)
        gaps.append(check_updated(pid, before, t0))
    diag("largest heartbeat gap at the host per relayed update, ms: %s" %
         ", ".join("%.1f" % g for g in gaps))
    # The relay exits once it has handed the VM back
    deadline = time.monotonic() + 10
    while True:
        out = subprocess.run(["pgrep", "-f", "qemu-system.*%s" % DOMAIN],
                             capture_output=True, text=True).stdout.split()
        if out == [str(pid)] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert out == [str(pid)], "QEMU processes of the domain: %s" % out
    time.sleep(0.5)
    assert os.path.getsize(log) > log_size, "serial log stopped"
    assert not errors(), "; ".join(errors()[:5])


def hot_xml(name, text):
    path = os.path.join(work, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def pci_ids():
    return linuxvm.pci_ids(monitor("query-pci"))


def wait_hot_disk(nic=True):
    """Until the attached disk's records and (with @nic) the TCP stream
    over the attached NIC go on"""
    return linuxvm.wait_hot(watch, 120, lambda: True, nic)


def update_with_cprload(pid, nic=True):
    state = os.path.join(work, "vm.cpr")
    t0 = time.monotonic()
    before = watch.snapshot()
    monitor("cprsave", file=state, mode="restart")
    monitor("cprload", file=state)
    check_updated(pid, before, t0)
    return wait_hot_disk(nic)


@case
def hotplug_through_virsh():
    """virsh attach-device --live of a qcow2 disk and of a NIC (libvirt
    creates the tap and passes it to QEMU), two updates: the guest
    writes records to the attached disk and streams TCP records over the
    NIC all along, and what libvirt lists (domblklist, domiflist) is what
    the updated QEMU has.  Then virsh detach-device of the NIC in the
    updated QEMU (libvirt waits for DEVICE_DELETED) and one more
    update."""
    global hot_disk
    pid = qemu_pid()
    img = os.path.join(work, "hot.qcow2")
    subprocess.run([linuxvm.QEMU_IMG, "create", "-q", "-f", "qcow2", img,
                    "%dM" % linuxvm.DISK_MB], check=True)
    disk = hot_xml("hot-disk.xml", """<disk type='file' device='disk'>
  <driver name='qemu' type='qcow2'/>
  <source file='%s'/>
  <target dev='vdc' bus='virtio'/>
</disk>""" % img)
    nic = hot_xml("hot-nic.xml", """<interface type='ethernet'>
  <target dev='%s' managed='yes'/>
  <model type='virtio'/>
  <driver name='qemu'/>
</interface>""" % HOT_TAP)
    virsh("attach-device", DOMAIN, disk, "--live")
    virsh("attach-device", DOMAIN, nic, "--live")
    linuxvm.start_peer(watch, HOT_TAP, second=True)
    hot_disk = img
    st = wait_hot_disk()
    diag("the guest writes to the attached disk: %d records, and sends "
         "over the attached NIC: %d records" % (st["vdc"], st["net2_host"]))
    ifindex = open("/sys/class/net/%s/ifindex" % HOT_TAP).read()
    for _ in range(2):
        st = update_with_cprload(pid)
        assert "vdc" in virsh("domblklist", DOMAIN)
        assert HOT_TAP in virsh("domiflist", DOMAIN)
        ids = pci_ids()
        assert "virtio-disk2" in ids and "net1" in ids, "devices: %s" % ids
        assert open("/sys/class/net/%s/ifindex" % HOT_TAP).read() == \
            ifindex, "the tap of the attached NIC was not kept"
    assert watch.net2_conns == 1, "the stream over the attached NIC was " \
        "reopened"
    diag("after 2 updates: %d records on the attached disk, %d over the "
         "attached NIC, one connection" % (st["vdc"], st["net2_host"]))
    # The attached NIC by its MAC address (the domain has another NIC)
    rows = [line.split() for line in virsh("domiflist", DOMAIN).splitlines()]
    mac = [r[-1] for r in rows if r and r[0] == HOT_TAP][0]
    nic = hot_xml("hot-nic-mac.xml", """<interface type='ethernet'>
  <mac address='%s'/>
  <target dev='%s' managed='yes'/>
  <model type='virtio'/>
</interface>""" % (mac, HOT_TAP))
    virsh("detach-device", DOMAIN, nic, "--live")
    deadline = time.monotonic() + 60
    while HOT_TAP in virsh("domiflist", DOMAIN) or "net1" in pci_ids():
        assert time.monotonic() < deadline, "the detached NIC is still " \
            "there: %s" % virsh("domiflist", DOMAIN)
        time.sleep(0.2)
    st = update_with_cprload(pid, nic=False)
    assert "vdc" in virsh("domblklist", DOMAIN)
    assert HOT_TAP not in virsh("domiflist", DOMAIN)
    assert "net1" not in pci_ids() and "virtio-disk2" in pci_ids()
    diag("NIC detached, one more update: %d records on the attached disk" %
         st["vdc"])
    assert not errors(), "; ".join(errors()[:5])


@case
def shutdown_through_virsh():
    st = watch.snapshot()
    virsh("shutdown", DOMAIN)
    deadline = time.monotonic() + 60
    while virsh("domstate", DOMAIN) != "shut off":
        if time.monotonic() > deadline:
            now = watch.snapshot()
            try:
                status = monitor("query-status")["status"]
            except Exception as e:  # what is known goes in the message
                status = "unknown (%s)" % e
            raise AssertionError(
                "domain did not shut down (the guest %s the power button; "
                "heartbeat %d -> %d, vda %d -> %d, vdb %d -> %d records; "
                "QEMU run state %s)%s" %
                ("saw" if watch.poweroff else "did not see", st["hb"],
                 now["hb"], st.get("vda", 0), now.get("vda", 0),
                 st.get("vdb", 0), now.get("vdb", 0), status,
                 watch.power_report()))
        time.sleep(0.2)
    assert watch.poweroff, "guest did not see the power button"
    problems = (linuxvm.check_disk(os.path.join(work, "disk.raw"), "raw",
                                   st["vda"]) +
                linuxvm.check_disk(os.path.join(work, "disk.qcow2"), "qcow2",
                                   st["vdb"]))
    if hot_disk:
        problems += linuxvm.check_disk(hot_disk, "qcow2", st["vdc"])
    assert not problems, "; ".join(problems)
    assert not errors(), "; ".join(errors()[:5])


def main():
    global work
    linuxvm.in_netns("cpr-libvirt")
    work = tempfile.mkdtemp(prefix="cpr-libvirt-",
                            dir=os.path.join(cprlib.TOP, "build"))
    print("TAP version 14")
    print("1..%d" % len(results), flush=True)
    failed = 0
    try:
        private_libvirt()
        for i, fn in enumerate(results, 1):
            name = fn.__name__.replace("_", "-")
            try:
                fn()
                print("ok %d - %s" % (i, name), flush=True)
            except Exception as e:  # report and go on
                failed += 1
                print("not ok %d - %s" % (i, name))
                msg = str(e)
                if isinstance(e, subprocess.CalledProcessError):
                    msg += "\n" + (e.stderr or "")
                for line in msg.splitlines() or [type(e).__name__]:
                    diag(line)
                for line in qemu_log_tail(15):
                    diag("qemu log: " + line)
                sys.stdout.flush()
    except Exception as e:
        failed += 1
        diag("libvirt set-up failed: %s" % e)
    finally:
        try:
            virsh("destroy", DOMAIN)
        except Exception:
            pass
        stop_daemons()
        shutil.rmtree(work, ignore_errors=True)
    return failed


if __name__ == "__main__":
    sys.exit(1 if main() else 0)
