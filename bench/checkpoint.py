#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Live checkpoint: how long cpr-checkpoint pauses the VM and how long it
takes to write the file, next to stock QEMU 7.2's background-snapshot
migration capability (also userfaultfd write-protect) on the same guest,
in the same run.

The boot-sector guest first writes all of its RAM and keeps rewriting it
during both checkpoints, so every page is in the file and the guest's
writes race the saving.  RAM is a memory-backend-memfd.

Pause: from the STOP event to the RESUME event (QEMU's timestamps).
Duration: from sending the command to the CPR_CHECKPOINT_COMPLETED event
(ours) or to query-migrate saying "completed" (stock), file fsynced in
both (ours does it itself; stock's is followed by a sync, counted).

Environment: CPR_BENCH_SIZES (GiB, default "1 16"), CPR_ACCEL (tcg),
CPR_BENCH_DIR (where the files go, default /var/tmp).
"""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "scripts"))
import cprlib  # noqa: E402


def pause(qmp, since):
    stop = cprlib.Qmp.wait_event(qmp, "STOP", since)
    resume = cprlib.Qmp.wait_event(qmp, "RESUME", since)
    return resume - stop


def ours(vm, path):
    since = len(vm.qmp.events)
    t0 = time.time()
    vm.qmp.cmd("cpr-checkpoint", file=path)
    returned = time.time() - t0
    end = vm.qmp.wait_event("CPR_CHECKPOINT_COMPLETED", since, timeout=3600)
    info = vm.qmp.cmd("query-cpr")["checkpoint"]
    if info["status"] != "completed":
        raise cprlib.QmpError("checkpoint %s: %s" % (info["status"],
                                                     info.get("error")))
    return pause(vm.qmp, since), returned, end - t0, info["bytes"]


def stock(vm, path):
    since = len(vm.qmp.events)
    vm.qmp.cmd("migrate-set-capabilities", capabilities=[
        {"capability": "background-snapshot", "state": True}])
    vm.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
    t0 = time.time()
    vm.qmp.cmd("migrate", uri="exec:cat > " + path)
    returned = time.time() - t0
    cprlib.wait_migration(vm.qmp, timeout=3600)
    os.sync()
    return pause(vm.qmp, since), returned, time.time() - t0


def main():
    sizes = [int(s) for s in
             os.environ.get("CPR_BENCH_SIZES", "1 16").split()]
    accel = os.environ.get("CPR_ACCEL", "tcg")
    tmpdir = os.environ.get("CPR_BENCH_DIR", "/var/tmp")

    print("Live checkpoint, accel %s, files in %s, guest rewriting all of "
          "its RAM" % (accel, tmpdir))
    print()
    print("| guest RAM | cpr-checkpoint pause | its command returns "
          "| file complete | RAM written | background-snapshot pause "
          "| its migrate returns | file complete | pause ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for gib in sizes:
        mem = ["-object", "memory-backend-memfd,id=mem,size=%dG" % gib,
               "-machine", "memory-backend=mem"]
        ckpt = os.path.join(tmpdir, "cpr-bench-checkpoint.cpr")
        snap = os.path.join(tmpdir, "cpr-bench-background.mig")
        vm = cprlib.Vm(gib * 1024, machine="q35", accel=accel, extra=mem)
        try:
            vm.wait_passes(1, timeout=3600)      # every page written
            p, r, d, b = ours(vm, ckpt)
            os.unlink(ckpt)
            sp, sr, sd = stock(vm, snap)
            print("| %d GiB | %.2f ms | %.1f ms | %.2f s | %.2f GiB "
                  "| %.2f ms | %.1f ms | %.2f s | %.2fx |"
                  % (gib, p * 1e3, r * 1e3, d, b / (1 << 30),
                     sp * 1e3, sr * 1e3, sd, p / sp), flush=True)
        finally:
            for f in (ckpt, snap):
                if os.path.exists(f):
                    os.unlink(f)
            vm.kill()


if __name__ == "__main__":
    main()
