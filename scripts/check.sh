#!/bin/bash
# Run every test and print TAP (version 14, one subtest per suite).
# Called by "make check" after the build.
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=$top/build
export QTEST_QEMU_BINARY=$build/qemu-system-x86_64
export CPR_GUEST_IMG=$build/guest/cpr-guest.img

# Accelerators: TCG always; KVM as well when it works on this host.
accels=tcg
if [ -n "${CPR_TEST_ACCEL:-}" ]; then
    accels=$CPR_TEST_ACCEL
elif [ -w /dev/kvm ] && echo quit | timeout 20 "$QTEST_QEMU_BINARY" -accel kvm \
        -machine none -display none -nodefaults -monitor stdio >/dev/null 2>&1; then
    accels=tcg,kvm
fi

suites=(cpr_test qemu_unit linux_e2e libvirt_e2e vfio_e2e reboot_e2e vhost_e2e
        snapshot_e2e syzkaller_e2e fork_e2e package_e2e fuzz sanitized style)
# Arguments: only these suites (make check runs them all)
if [ $# -gt 0 ]; then
    for s in "$@"; do
        [[ " ${suites[*]} " == *" $s "* ]] || { echo "no suite '$s'" >&2; exit 2; }
    done
    suites=("$@")
fi
n=0
failed=0

run_suite() {
    local name=$1 start=$SECONDS
    shift
    n=$((n + 1))
    echo "# Subtest: $name"
    if "$@" 2>&1 | sed 's/^/    /'; then
        echo "ok $n - $name # $((SECONDS - start)) s"
    else
        echo "not ok $n - $name # $((SECONDS - start)) s"
        failed=1
    fi
}

# Run a command in a session of its own, its output in build/NAME.log: a
# QEMU left behind by a failed case (one that took a VM back is not the
# test's child) is killed with the session and cannot hold the output open.
in_session() {
    local name=$1 log=$build/$1.log pgid=$build/$1.pgid rc=0
    shift
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pgid" \
        timeout 1800 "$@" >"$log" 2>&1 || rc=$?
    kill -KILL -- "-$(cat "$pgid")" 2>/dev/null || true
    cat "$log"
    return $rc
}

cpr_test() {
    CPR_TEST_ACCEL=$accels in_session cpr-test "$build/cpr-test" --tap -k
}

# QEMU's own unit tests of what the patches change: the vmstate wire
# format of arrays (patch 0018 reads and writes them in one go).
qemu_unit() {
    in_session qemu-unit "$build/obj/tests/unit/test-vmstate" --tap
}

# The Linux guest through live updates, cross-version updates, recoveries
# and the soak (TCG only: Linux guests stall under KVM on some hosts).
linux_e2e() {
    CPR_TEST_ACCEL=tcg in_session linux-e2e python3 \
        "$top/tests/e2e/linux-update.py"
}

# VM fork of the Linux guest: children, the parent apart, resets.
fork_e2e() {
    in_session fork-e2e python3 "$top/tests/e2e/linux-fork.py"
}

# The same guest managed by Debian's libvirt, updated through virsh.
libvirt_e2e() {
    in_session libvirt-e2e python3 "$top/tests/e2e/libvirt-update.py"
}

# A device passed through with a real kernel VFIO, inside an L1 guest
# (tests/e2e/vfio-update.py).
vfio_e2e() {
    in_session vfio-e2e python3 "$top/tests/e2e/vfio-update.py"
}

# Reboot mode across a real restart (kexec) of an L1 guest's kernel
# (tests/e2e/reboot-l1.py).
reboot_e2e() {
    in_session reboot-e2e python3 "$top/tests/e2e/reboot-l1.py"
}

# vhost-net kept across updates, with a real kernel vhost-net inside an
# L1 guest (tests/e2e/vhost-update.py).
vhost_e2e() {
    in_session vhost-e2e python3 "$top/tests/e2e/vhost-update.py"
}

# In-process snapshot and restore (fuzzing): QMP, the cpr-trigger device
# with the harness guest, the doorbell, a Linux guest restored 2000 times.
snapshot_e2e() {
    CPR_TEST_ACCEL=$accels in_session snapshot-e2e python3 \
        "$top/tests/e2e/snapshot.py"
}

# syzkaller's snapshot mode, unmodified, with -machine cpr-snapshot=on:
# build/syz-host drives the guest executor through HMP savevm/loadvm,
# the ivshmem doorbell and shared memory (tests/e2e/syzkaller.py).
syzkaller_e2e() {
    CPR_TEST_ACCEL=$accels in_session syzkaller-e2e python3 \
        "$top/tests/e2e/syzkaller.py"
}

# The Debian package (scripts/deb.sh): installed over Debian's
# qemu-system-x86, upgraded under a running VM, purged
# (tests/e2e/package-upgrade.py).
package_e2e() {
    in_session package-e2e python3 "$top/tests/e2e/package-upgrade.py"
}

# The libFuzzer targets of the CPR parsers, 60 s each, after their
# regression inputs (scripts/fuzz.sh, build/obj-san).
fuzz() {
    in_session fuzz bash "$top/scripts/fuzz.sh"
}

# cpr-test and the snapshot suite on the ASan/UBSan build
# (scripts/sanitized.sh): no sanitizer report.
sanitized() {
    in_session sanitized bash "$top/scripts/sanitized.sh"
}

# QEMU coding style on our C files and on every patch.
style() {
    local cp=$build/src/scripts/checkpatch.pl f i=0 bad=0 out
    local files=()
    mapfile -t files < <(grep -E '\.(c|h)$' "$top/scripts/overlay.list"
                         cd "$top" && ls tests/guest/*.[ch] tests/e2e/*.[ch])
    echo "1..$(( ${#files[@]} + $(ls "$top"/patches/*.patch | wc -l) ))"
    for f in "${files[@]}" "$top"/patches/*.patch; do
        i=$((i + 1))
        if [[ $f == *.patch ]]; then
            out=$(cd "$build/src" && perl "$cp" --no-signoff --terse "$f" 2>&1)
        else
            out=$(cd "$top" && perl "$cp" --no-tree --terse -f "$f" 2>&1)
        fi
        if echo "$out" | grep -qE '(ERROR|WARNING)'; then
            echo "not ok $i - checkpatch $(basename "$f")"
            echo "$out" | grep -E '(ERROR|WARNING)' | sed 's/^/# /'
            bad=1
        else
            echo "ok $i - checkpatch $(basename "$f")"
        fi
    done
    return $bad
}

echo "TAP version 14"
echo "1..${#suites[@]}"
echo "# accelerators: $accels"
for s in "${suites[@]}"; do
    run_suite "$s" "$s"
done
echo "# all suites: $SECONDS s"
exit $failed
