#!/bin/bash
# Configure (once) and build QEMU x86_64-softmmu plus the cpr qtest.
# Result: build/qemu-system-x86_64 and build/cpr-test.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
obj=$top/build/obj

"$top/scripts/fetch.sh"
"$top/scripts/prepare.sh"

pkgversion=${CPR_PKGVERSION:-qemu-cpr}
cfg="--target-list=x86_64-softmmu --enable-kvm --enable-tcg \
 --disable-docs --disable-user --disable-gtk --disable-sdl --disable-opengl \
 --disable-xen --disable-werror --with-git-submodules=ignore \
 --firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu \
 --with-pkgversion=$pkgversion"
if [ ! -f "$obj/build.ninja" ] || [ "$(cat "$obj/.cpr-config" 2>/dev/null)" != "$cfg" ]; then
    rm -rf "$obj"
    mkdir -p "$obj"
    # shellcheck disable=SC2086
    (cd "$obj" && "$top/build/src/configure" $cfg >configure.log 2>&1) || {
        tail -30 "$obj/configure.log" >&2
        exit 1
    }
    echo "$cfg" >"$obj/.cpr-config"
fi
ninja -C "$obj" -j"${JOBS:-$(nproc)}" qemu-system-x86_64 qemu-img tests/qtest/cpr-test
ln -sfn obj/qemu-system-x86_64 "$top/build/qemu-system-x86_64"
ln -sfn obj/qemu-img "$top/build/qemu-img"
ln -sfn obj/tests/qtest/cpr-test "$top/build/cpr-test"

# A binary run from the build tree looks for firmware under qemu-bundle/;
# point that at Debian's firmware packages.
for d in /usr/share/qemu /usr/share/seabios /usr/lib/ipxe/qemu; do
    mkdir -p "$obj/qemu-bundle$d"
    for f in "$d"/*; do
        [ -e "$obj/qemu-bundle$f" ] || ln -s "$f" "$obj/qemu-bundle$f"
    done
done
