#!/bin/bash
# make bench: blackout of cprsave/cprload next to the stock ways, for the
# boot-sector guest at several RAM sizes (memfd RAM, then anonymous RAM
# that cprsave moves into memfds, next to memfd RAM) and for the Linux
# guest with its network and disks (needs root: network namespace, tap);
# then restores per second of the in-process snapshot next to loadvm,
# and syzkaller's savevm/loadvm flow with and without cpr-snapshot=on;
# then reboot mode's save and restore next to the raw disk and to
# migrate-to-file; then the pause of transfer and exec mode next to
# upstream QEMU 10.0's cpr-transfer (built first from Debian trixie's
# source); then VM fork's latency, reset and memory; then live
# checkpoints next to background-snapshot.
set -euo pipefail
here=$(dirname "$0")
python3 "$here/blackout.py"
echo
python3 "$here/anonymous.py"
echo
python3 "$here/linux-blackout.py"
echo
python3 "$here/snapshot.py"
echo
python3 "$here/syzkaller.py"
echo
python3 "$here/reboot.py"
echo
bash "$here/upstream-qemu.sh"
python3 "$here/transfer.py"
echo
python3 "$here/fork.py"
echo
python3 "$here/checkpoint.py"
