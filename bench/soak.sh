#!/bin/bash
# The long soak of live update (issue 15): CPR_SOAK (500) updates of the
# Linux guest (4 vCPUs, tap network and raw/qcow2 disk traffic), exec and
# transfer mixed, build A <-> build B, with a second QMP client sending
# commands back to back and another VM restoring snapshots in a loop all
# along; then the guest powers off and the disk images are checked.
# Prints the pauses, the heartbeats, fds, RssAnon and Shmem per update,
# the second client's and the other VM's counts (TAP).  make check runs
# the same with 50 updates.  Needs root; about 4 s per update on two cores
# under TCG.  Not part of make bench (it measures no pause against a
# baseline): run it by hand.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
export CPR_SOAK=${CPR_SOAK:-500}
export CPR_TEST_ACCEL=${CPR_TEST_ACCEL:-tcg}
exec python3 "$top/tests/e2e/linux-update.py" soak powerdown-and-disks-intact
