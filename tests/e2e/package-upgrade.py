#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""The operator's upgrade with the Debian package (scripts/deb.sh, "make
deb"): package A (build/obj) is installed with apt, the Linux test guest
runs from /usr/bin/qemu-system-x86_64 with plain anonymous RAM, package B
(build/obj-b) is installed with dpkg -i while it runs, and cprsave
restart moves the VM to B: same PID, query-version names B, heartbeat,
uptime and TCP stream go on.  Debian's binary, diverted aside by the
package, is refused as a cprsave binary.  Purging the package leaves
/usr/bin/qemu-system-x86_64, the diversions and /usr/share/doc as they
were.  Prints TAP.

Needs root; installs and purges the package "qemu-cpr" on this host, and
refuses to run if it is installed already.  Debian's qemu-system-x86
(scripts/deps.sh installs it) must be installed, so that the diversion is
tested."""

import hashlib
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "..", "scripts"))
import cprlib  # noqa: E402
import linuxvm  # noqa: E402

PKG = "qemu-cpr"
BIN = "/usr/bin/qemu-system-x86_64"
DISTRIB = BIN + ".distrib"
DEB_SH = os.path.join(cprlib.TOP, "scripts", "deb.sh")
DEBIAN_VERSION = open(os.path.join(cprlib.TOP, "build", "pristine",
                                   ".debian-version")).read().strip()

vm = None
work = None
debs = {}
before = None


def watch_errors():
    return vm.watch.snapshot()["errors"] if vm else []


# Each case needs the one before it
tap = cprlib.Tap(check=watch_errors, stop=True)
case, diag = tap.case, tap.diag


def sh(*cmd):
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode:
        raise AssertionError("%s failed (%d): %s" % (" ".join(cmd),
                                                     p.returncode,
                                                     p.stderr.strip()[-800:]))
    return p.stdout


def installed(pkg):
    p = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg],
                       capture_output=True, text=True)
    return p.returncode == 0 and p.stdout.endswith(" installed")


def sha256(path):
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except FileNotFoundError:
        return None


def host_state():
    """What the package touches on the host."""
    diversions = [line for line in sh("dpkg-divert", "--list").splitlines()
                  if "qemu-system-x86_64" in line]
    return {"binary": sha256(BIN), "distrib": sha256(DISTRIB),
            "diversions": sorted(diversions),
            "doc": os.path.exists("/usr/share/doc/" + PKG)}


def check_running(pid, package):
    st = vm.qmp.cmd("query-status")["status"]
    assert st == "running", "the VM is %s" % st
    assert vm.pid == pid, "the VM's PID changed"
    got = vm.qmp.cmd("query-version")["package"]
    assert got == package, "the VM runs %r, not %r" % (got, package)


@case
def build_packages():
    global work
    work = tempfile.mkdtemp(prefix="cpr-deb-",
                            dir=os.path.join(cprlib.TOP, "build"))
    for name, obj, rev in (("A", "obj", "0.1"), ("B", "obj-b", "0.2")):
        deb = sh("bash", DEB_SH, os.path.join(cprlib.TOP, "build", obj),
                 "%s+cpr%s" % (DEBIAN_VERSION, rev), work).strip()
        fields = sh("dpkg-deb", "-f", deb, "Package", "Version", "Depends")
        assert "Version: %s+cpr%s" % (DEBIAN_VERSION, rev) in fields, fields
        assert "qemu-system-data" in fields and "libglib" in fields, fields
        debs[name] = deb
        diag("%s: %s, %d KiB" % (name, os.path.basename(deb),
                                 os.path.getsize(deb) // 1024))


@case
def install_a():
    """apt installs A over Debian's qemu-system-x86, whose binary is
    diverted aside"""
    assert before["binary"], "qemu-system-x86 is not installed " \
        "(scripts/deps.sh installs it)"
    sh("apt-get", "install", "-y", "-q", "--no-install-recommends",
       debs["A"])
    assert installed(PKG)
    out = sh(BIN, "--version")
    assert "(qemu-cpr)" in out, out
    assert sha256(DISTRIB) == before["binary"], \
        "Debian's binary is not at %s" % DISTRIB
    assert any("by " + PKG in d for d in host_state()["diversions"])


@case
def boot_from_installed_path():
    global vm
    vm = linuxvm.LinuxVm(binary=BIN, machine="q35")
    vm.start()
    check_running(vm.pid, "qemu-cpr")


@case
def upgrade_while_running():
    """dpkg replaces the file under the running VM; cprsave restart (no
    binary named) executes the new file in the same PID"""
    pid = vm.pid
    up = vm.watch.snapshot()["up"]
    sh("dpkg", "-i", debs["B"])
    exe = os.readlink("/proc/%d/exe" % pid)
    assert exe.endswith("(deleted)"), "the running binary is %s" % exe
    pause, gap = vm.update()
    check_running(pid, "qemu-cpr-b")
    st = vm.wait_progress()
    assert st["up"] > up, "guest uptime went from %d to %d ms" % (up,
                                                                  st["up"])
    diag("pause %.1f ms, largest heartbeat gap %.1f ms (anonymous RAM "
         "moved first)" % (pause * 1e3, gap * 1e3))


@case
def debian_binary_refused():
    """Debian's QEMU would boot a new guest in the VM's place"""
    try:
        vm.qmp.cmd("cprsave", file=vm.state, mode="restart", binary=DISTRIB)
        raise AssertionError("cprsave to Debian's binary succeeded")
    except cprlib.QmpError as e:
        assert "has no 'qemu-cpr' note" in str(e), str(e)
        diag(str(e))
    check_running(vm.pid, "qemu-cpr-b")
    vm.wait_progress()


@case
def purge_restores_host():
    vm.powerdown()
    sh("apt-get", "purge", "-y", "-q", PKG)
    after = host_state()
    assert after == before, "before: %s; after: %s" % (before, after)


if __name__ == "__main__":
    if installed(PKG):
        print("Bail out! %s is installed on this host; this test installs "
              "and purges it: remove it first" % PKG)
        sys.exit(1)
    linuxvm.in_netns("cpr-deb")
    before = host_state()
    try:
        failed = tap.run()
    finally:
        if vm:
            vm.kill()
        if installed(PKG):
            subprocess.run(["apt-get", "purge", "-y", "-q", PKG],
                           capture_output=True)
        if work:
            subprocess.run(["rm", "-rf", work])
    sys.exit(1 if failed else 0)
