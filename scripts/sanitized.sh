#!/bin/bash
# The qtest suite and the snapshot suite on the sanitizer build
# (build/obj-san, scripts/build.sh san: AddressSanitizer and
# UndefinedBehaviorSanitizer; LeakSanitizer runs in scripts/fuzz.sh), as
# TAP.  Every
# report of a sanitizer fails the run: QEMU writes them into
# build/san-logs/, and a test that passed with a report still fails.
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
obj=$top/build/obj-san
logs=$top/build/san-logs
rm -rf "$logs"
mkdir -p "$logs"

export ASAN_SYMBOLIZER_PATH=/usr/lib/llvm-14/bin/llvm-symbolizer
# QEMU frees little of what lives as long as it does: leaks are looked for
# per input by the fuzz targets, not at QEMU's exit.  An error ends the
# process with a report in $logs.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:log_path=$logs/asan
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$logs/ubsan
export QTEST_QEMU_BINARY=$obj/qemu-system-x86_64
export CPR_QEMU=$obj/qemu-system-x86_64
export CPR_GUEST_IMG=$top/build/guest/cpr-guest.img
# qemu-img of the main build (this one has none): the kill cases check images
export CPR_QEMU_IMG=$top/build/obj/qemu-img

failed=0
echo "1..3"
# Left out: -daemonize, whose fork() in a process with threads deadlocks
# clang 14's ASan allocator in the child (the runtime takes no lock
# around fork); build/cpr-test runs that case
skip=(-s /cpr/tcg/restart/daemonize-blocked)
if CPR_TEST_ACCEL=tcg "$obj/tests/qtest/cpr-test" --tap -k "${skip[@]}" \
        >"$logs/cpr-test.tap" 2>&1; then
    echo "ok 1 - cpr-test under the sanitizers ($(grep -c '^ok' "$logs/cpr-test.tap") cases)"
else
    echo "not ok 1 - cpr-test under the sanitizers"
    grep -E '^not ok|^# (Start|ERROR)' "$logs/cpr-test.tap" | head -20 | sed 's/^/# /'
    failed=1
fi
if CPR_TEST_ACCEL=tcg python3 "$top/tests/e2e/snapshot.py" >"$logs/snapshot.tap" 2>&1; then
    echo "ok 2 - snapshot suite under the sanitizers"
else
    echo "not ok 2 - snapshot suite under the sanitizers"
    grep -E '^not ok' "$logs/snapshot.tap" | head -20 | sed 's/^/# /'
    failed=1
fi
# (ASan also warns there that coroutines switch stacks: not a report)
reports=$(grep -l -E 'ERROR: |runtime error: ' "$logs"/asan.* "$logs"/ubsan.* \
          2>/dev/null)
if [ -z "$reports" ]; then
    echo "ok 3 - no sanitizer report"
else
    echo "not ok 3 - sanitizer reports: $reports"
    for r in $reports; do
        head -40 "$r" | sed 's/^/# /'
    done
    failed=1
fi
exit $failed
