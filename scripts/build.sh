#!/bin/bash
# Configure (once) and build QEMU x86_64-softmmu plus the cpr qtest.
# Result: build/qemu-system-x86_64 and build/cpr-test; with argument "b",
# build/qemu-system-x86_64-b (build B: the same sources with another package
# version, so that query-version tells the two apart); with argument "san",
# build/obj-san: the same sources built by clang with AddressSanitizer,
# UndefinedBehaviorSanitizer and libFuzzer (qemu-fuzz-x86_64 and its CPR
# targets, and a sanitized qemu-system-x86_64 and cpr-test).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)

"$top/scripts/fetch.sh"
"$top/scripts/prepare.sh"

# configure_and_build OBJDIR PKGVERSION NINJA-TARGETS...
# ($CPR_CONFIGURE_EXTRA: more configure arguments, word-split)
configure_and_build() {
    local obj=$1 pkgversion=$2 cfg d f
    shift 2
    cfg="${CPR_CONFIGURE_EXTRA:-} --target-list=x86_64-softmmu --enable-kvm --enable-tcg \
 --disable-docs --disable-user --disable-gtk --disable-sdl --disable-opengl \
 --disable-xen --disable-werror --with-git-submodules=ignore --enable-seccomp \
 --firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu \
 --with-pkgversion=$pkgversion"
    if [ ! -f "$obj/build.ninja" ] ||
       [ "$(cat "$obj/.cpr-config" 2>/dev/null)" != "$cfg" ]; then
        rm -rf "$obj"
        mkdir -p "$obj"
        # shellcheck disable=SC2086
        (cd "$obj" && "$top/build/src/configure" $cfg >configure.log 2>&1) || {
            tail -30 "$obj/configure.log" >&2
            exit 1
        }
        echo "$cfg" >"$obj/.cpr-config"
    fi
    ninja -C "$obj" -j"${JOBS:-$(nproc)}" "$@"
    bash "$top/scripts/firmware-links.sh" "$obj"
}

if [ "${1:-}" = san ]; then
    # -O1 and line tables: a third of -O2's build time, usable reports.
    # UB is fatal (no recovery), so that a report fails the run.
    CPR_CONFIGURE_EXTRA="--cc=clang-14 --cxx=clang++-14 --enable-fuzzing \
 --enable-sanitizers --disable-stack-protector \
 --extra-cflags=-fno-sanitize-recover=undefined \
 --extra-cflags=-gline-tables-only --extra-cflags=-O1" \
        configure_and_build "$top/build/obj-san" qemu-cpr-san \
        qemu-fuzz-x86_64 qemu-system-x86_64 tests/qtest/cpr-test
    exit 0
fi

if [ "${1:-}" = b ]; then
    configure_and_build "$top/build/obj-b" qemu-cpr-b qemu-system-x86_64
    ln -sfn obj-b/qemu-system-x86_64 "$top/build/qemu-system-x86_64-b"
    exit 0
fi

configure_and_build "$top/build/obj" "${CPR_PKGVERSION:-qemu-cpr}" \
    qemu-system-x86_64 qemu-img tests/qtest/cpr-test tests/unit/test-vmstate
ln -sfn obj/qemu-system-x86_64 "$top/build/qemu-system-x86_64"
ln -sfn obj/qemu-img "$top/build/qemu-img"
ln -sfn obj/tests/qtest/cpr-test "$top/build/cpr-test"
