#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""The qemu-cpr demo: live-update a running guest with cprsave/cprload,
then with cprsave through a relay process, and print the pauses and the
checks.  Exit status 0 only if every check holds."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cprlib  # noqa: E402

MEM_MB = 512
PAGES = 4096            # page counters checked: 16 MiB from 2 MiB


def main():
    accel = os.environ.get("CPR_ACCEL", "tcg")
    print("qemu-cpr demo: live update of a running guest")
    vm = cprlib.Vm(MEM_MB, accel=accel)
    ok = True
    try:
        vm.wait_passes(3)
        pid = vm.pid
        version = vm.qmp.cmd("query-version")["package"]
        print("  QEMU %s, pid %d, %d MiB guest RAM in memfds, accel %s"
              % (version, pid, MEM_MB, accel))
        print("  guest has made %d passes over its RAM" % vm.passes())

        def check(what, good):
            nonlocal ok
            ok = ok and good
            print("  check: %-58s %s" % (what, "ok" if good else "FAILED"))

        for relay in (False, True):
            before = vm.counters(PAGES)
            sock = vm.qmp.sock
            if relay:
                print("  cprsave restart with relay -> a relay process runs "
                      "the VM while this PID executes the new binary")
                pauses = cprlib.cpr_relay(vm)
            else:
                print("  cprsave restart -> new QEMU process -> cprload")
                pauses = [cprlib.cpr_update(vm)]
            kept = vm.qmp.sock is sock
            after = vm.counters(PAGES)
            status = vm.status()
            t0 = vm.passes()
            vm.wait_passes(3, timeout=60)
            later = vm.counters(PAGES)

            if relay:
                print("  pauses (STOP -> RESUME, relay then this PID): "
                      "%.1f + %.1f ms" % (pauses[0] * 1000, pauses[1] * 1000))
            else:
                print("  pause (STOP in old process -> RESUME in new): "
                      "%.1f ms" % (pauses[0] * 1000))
            check("same PID (%d), the process was replaced by execve" % pid,
                  vm.proc.poll() is None and vm.pid == pid)
            check("same QMP connection (the new process answered cprsave)",
                  kept)
            check("guest memory intact (%d page counters, none behind)"
                  % PAGES, all(a >= b for a, b in zip(after, before)) and
                  max(after) - min(after) <= 1)
            check("guest kept running (status %s, counters %d -> %d)"
                  % (status, after[0], later[0]),
                  status == "running" and later[0] > after[0] and
                  vm.passes() > t0)
    finally:
        vm.kill()
    print("demo %s" % ("passed" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
