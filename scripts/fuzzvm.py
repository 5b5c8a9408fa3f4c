# SPDX-License-Identifier: GPL-2.0-or-later
"""QEMU on the fuzzing harness guest (tests/guest/fuzz-guest.c): the
cpr-trigger device, and an ivshmem-plain device on a shared file the host
maps (struct fuzz_io), excluded from snapshots.  Shared by tests/e2e and
bench/."""

import mmap
import os
import socket
import struct
import subprocess
import tempfile
import time

import cprlib

FUZZ_GUEST = os.path.join(cprlib.TOP, "build", "guest", "fuzz-guest.elf")
IO_SIZE = 1 << 20
IO_MAGIC = 0x5a5a4655
IO_FIELDS = ("magic", "pages", "iterations", "errors", "last_error",
             "last_status", "restored", "fill_mb")


class FuzzVm:
    """@pages: pages each iteration dirties; @doorbell: a unix socket
    chardev for the trigger; @trigger: False leaves the device out (the
    guest then halts at start); @fill: the guest writes all of its RAM
    before the snapshot; @trace: trace events to turn on, written to
    self.log (also where events turned on later over QMP go)."""

    def __init__(self, accel, pages=16, doorbell=False, mem_mb=256,
                 machine="q35", trigger=True, fill=False, extra=(),
                 trace=()):
        self.dir = tempfile.mkdtemp(prefix="cpr-snap-")
        self.log = os.path.join(self.dir, "trace.log")
        self.io_path = "/dev/shm/cpr-fuzz-%d-%d" % (os.getpid(), id(self))
        with open(self.io_path, "wb") as f:
            f.truncate(IO_SIZE)
        fd = os.open(self.io_path, os.O_RDWR)
        self.io_map = mmap.mmap(fd, IO_SIZE)
        os.close(fd)
        self.set("pages", pages)
        self.set("fill_mb", mem_mb if fill else 0)
        qmp_path = os.path.join(self.dir, "qmp.sock")
        device = "cpr-trigger,id=trigger,exclude=io"
        args = [cprlib.QEMU, "-machine", machine, "-accel", accel,
                "-m", str(mem_mb), "-display", "none", "-nodefaults",
                "-rtc", "clock=vm", "-kernel", FUZZ_GUEST,
                "-object", "memory-backend-file,id=io,mem-path=%s,"
                "size=%d,share=on" % (self.io_path, IO_SIZE),
                "-device", "ivshmem-plain,memdev=io,master=on",
                "-qmp", "unix:%s,server=on,wait=off" % qmp_path,
                "-D", self.log]
        for event in trace:
            args += ["-trace", event]
        if doorbell:
            self.bell_path = os.path.join(self.dir, "bell.sock")
            args += ["-chardev", "socket,id=bell,path=%s,server=on,"
                     "wait=off" % self.bell_path]
            device += ",chardev=bell"
        if trigger:
            args += ["-device", device]
        args += list(extra)
        self.proc = subprocess.Popen(args)
        self.qmp = cprlib.Qmp(qmp_path, self.proc)
        self.bell = None
        if doorbell:
            self.bell = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.bell.connect(self.bell_path)

    def io(self):
        return dict(zip(IO_FIELDS, struct.unpack_from(
            "<%dI" % len(IO_FIELDS), self.io_map)))

    def set(self, field, value):
        struct.pack_into("<I", self.io_map, 4 * IO_FIELDS.index(field),
                         value)

    def wait(self, cond, timeout=120):
        deadline = time.monotonic() + timeout
        while not cond(self.io()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise cprlib.QmpError("guest made no progress: %s" %
                                      self.io())
            time.sleep(0.01)
        return self.io()

    def snapshot_info(self):
        return self.qmp.cmd("query-cpr").get("snapshot")

    def kill(self):
        self.qmp.close()
        if self.bell:
            self.bell.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.io_map.close()
        os.unlink(self.io_path)
        for name in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, name))
        os.rmdir(self.dir)
