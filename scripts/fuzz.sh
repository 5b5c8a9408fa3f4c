#!/bin/bash
# The libFuzzer targets of the CPR parsers (tests/qtest/fuzz/cpr_*_fuzz.c
# in build/obj-san/qemu-fuzz-x86_64, scripts/build.sh san), as TAP.
#
#   scripts/fuzz.sh [TARGET...]     (default: all of them)
#
# For each target: every regression input of tests/fuzz/TARGET/ runs
# once; then the target writes its seeds (state files, CPR states,
# channel traffic of this build) into build/fuzz/TARGET/corpus, and is
# fuzzed from that corpus for CPR_FUZZ_TIME seconds (60).  What it finds
# is in build/fuzz/TARGET/ (crash-*, leak-*, timeout-*, oom-*): copy an
# input into tests/fuzz/TARGET/ once its defect is fixed.
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
fuzzer=$top/build/obj-san/qemu-fuzz-x86_64
time=${CPR_FUZZ_TIME:-60}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(cpr-file cpr-state cpr-channel cpr-trigger)

export ASAN_SYMBOLIZER_PATH=/usr/lib/llvm-14/bin/llvm-symbolizer
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# A GLib critical (a precondition broken) is a defect too
export G_DEBUG=fatal-criticals

# libFuzzer's limits: an input runs in well under a second; half a GiB
# is more than any input needs
limits=(-timeout=20 -rss_limit_mb=2048 -malloc_limit_mb=512)

n=0
failed=0
echo "1..$(( ${#targets[@]} * 2 ))"
for t in "${targets[@]}"; do
    out=$top/build/fuzz/$t
    mkdir -p "$out/corpus"
    log=$out/log

    n=$((n + 1))
    mapfile -t regress < <(ls -d "$top/tests/fuzz/$t"/* 2>/dev/null)
    if [ ${#regress[@]} = 0 ]; then
        echo "ok $n - $t: no regression inputs yet"
    elif "$fuzzer" "--fuzz-target=$t" "${limits[@]}" "${regress[@]}" \
            >"$log" 2>&1; then
        echo "ok $n - $t: ${#regress[@]} regression inputs refused cleanly"
    else
        echo "not ok $n - $t: a regression input fails again"
        tail -40 "$log" | sed 's/^/# /'
        failed=1
    fi

    n=$((n + 1))
    rm -f "$out"/crash-* "$out"/leak-* "$out"/timeout-* "$out"/oom-*
    # (-runs=0: the corpus kept from earlier runs runs once, and the target
    # writes its seeds, which the fuzzing run below starts from)
    if ! CPR_FUZZ_SEEDS=$out/corpus "$fuzzer" "--fuzz-target=$t" -runs=0 \
            "${limits[@]}" -artifact_prefix="$out/" "$out/corpus" \
            >"$log" 2>&1; then
        echo "not ok $n - $t: its seeds or its kept corpus fail"
        tail -40 "$log" | sed 's/^/# /'
        failed=1
        continue
    fi
    if "$fuzzer" "--fuzz-target=$t" "${limits[@]}" \
            -max_total_time="$time" -print_final_stats=1 \
            -artifact_prefix="$out/" "$out/corpus" >"$log" 2>&1; then
        echo "ok $n - $t: fuzzed for $time s," \
             "$(sed -n 's/^stat::number_of_executed_units: *//p' "$log") inputs," \
             "corpus of $(ls "$out/corpus" | wc -l)"
    else
        echo "not ok $n - $t: found a defect: $(ls "$out"/crash-* \
              "$out"/leak-* "$out"/timeout-* "$out"/oom-* 2>/dev/null)"
        grep -E -A40 'ERROR: |runtime error|==ERROR|deadly signal' "$log" |
            head -60 | sed 's/^/# /'
        failed=1
    fi
done
exit $failed
