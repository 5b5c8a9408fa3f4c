#!/bin/bash
# Build upstream QEMU 10.0 (Debian trixie's qemu source package, with
# Debian's patches) for x86_64-softmmu into build/upstream, to measure its
# cpr-transfer next to ours (bench/transfer.py).
#
# The trixie deb-src entry is derived from the machine's own apt sources
# (the mirror its Debian entries use), written to a temporary apt
# configuration with its own lists directory, and removed afterwards: the
# machine's apt setup is not changed and no registry host is written here.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out=$top/build/upstream
bin=$out/obj/qemu-system-x86_64

[ -x "$bin" ] && exit 0
# Debian's repacked source has no firmware blobs: the build uses Debian's
# firmware packages (--firmwarepath), as build/ does.
[ "$(id -u)" = 0 ] || { echo "upstream-qemu.sh: run as root" >&2; exit 1; }

if [ ! -f "$out/src/.unpacked" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT

    # The mirrors of the machine's Debian entries (not -security, not others)
    {
        awk 'BEGIN { RS = "" } /(^|\n)Types:[^\n]* deb( |\n|$)/ &&
             /(^|\n)Suites:[^\n]*bookworm( |\n|$)/ {
                 n = split($0, l, "\n")
                 for (i = 1; i <= n; i++)
                     if (l[i] ~ /^URIs:/) { sub(/^URIs: */, "", l[i]); print l[i] }
             }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true
        sed -n 's/^deb \(\[[^]]*\] \)\?\([^ ]*\) bookworm .*/\2/p' \
            /etc/apt/sources.list 2>/dev/null || true
    } | tr ' ' '\n' | grep -v '^$' | sort -u >"$tmp/mirrors"
    [ -s "$tmp/mirrors" ] || {
        echo "upstream-qemu.sh: no Debian bookworm entry in the apt sources" >&2
        exit 1
    }
    key=/usr/share/keyrings/debian-archive-keyring.gpg
    while read -r uri; do
        echo "deb-src [signed-by=$key] $uri trixie main"
        echo "deb [signed-by=$key] $uri bookworm-backports main"
    done <"$tmp/mirrors" >"$tmp/trixie.list"

    apt_tmp=(-o "Dir::Etc::SourceList=$tmp/trixie.list"
             -o "Dir::Etc::SourceParts=/dev/null"
             -o "Dir::State::Lists=$tmp/lists"
             -o "Dir::Cache=$tmp/cache"
             -o "APT::Sandbox::User=root")
    mkdir -p "$tmp/lists/partial" "$tmp/cache" "$out"
    apt-get "${apt_tmp[@]}" update -qq
    (cd "$out" && apt-get "${apt_tmp[@]}" source --download-only -qq qemu/trixie)
    # QEMU 10 needs meson >= 1.5 (Debian's repacked source does not bundle
    # it): bookworm-backports' meson, pure Python, unpacked next to the build
    mver=$(apt-cache "${apt_tmp[@]}" policy meson |
           sed -n 's/^ *\(1\.[5-9][^ ]*bpo12[^ ]*\) .*/\1/p' | head -1)
    [ -n "$mver" ] || { echo "upstream-qemu.sh: no meson >= 1.5 in bookworm-backports" >&2; exit 1; }
    (cd "$tmp" && apt-get "${apt_tmp[@]}" download -qq "meson=$mver")
    rm -rf "$out/meson"
    dpkg-deb -x "$tmp"/meson_*.deb "$out/meson"
    rm -rf "$tmp/lists"

    rm -rf "$out/src"
    dpkg-source --no-check -x "$(ls "$out"/qemu_*.dsc | sort -V | tail -1)" \
        "$out/src" >/dev/null
    touch "$out/src/.unpacked"
fi
dsc=$(ls "$out"/qemu_*.dsc | sort -V | tail -1)
ver=$(sed -n 's/^Version: //p' "$dsc")
case "$ver" in
*:10.0*) ;;
*) echo "upstream-qemu.sh: trixie's qemu is $ver, not 10.0" >&2; exit 1 ;;
esac

DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
mkdir -p "$out/obj"
[ -f "$out/obj/build.ninja" ] ||
(cd "$out/obj" &&
 PATH=/usr/bin:$PATH PYTHONPATH=$out/meson/usr/lib/python3/dist-packages ../src/configure \
     --target-list=x86_64-softmmu \
     --enable-kvm --enable-tcg --disable-docs --disable-user --disable-gtk \
     --disable-sdl --disable-opengl --disable-xen --disable-werror \
     --disable-rust --enable-seccomp --disable-download \
     --disable-install-blobs \
     --firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu \
     --with-pkgversion="upstream $ver" >configure.log 2>&1) || {
    tail -30 "$out/obj/configure.log" >&2
    exit 1
}
ninja -C "$out/obj" -j"${JOBS:-$(nproc)}" qemu-system-x86_64
bash "$top/scripts/firmware-links.sh" "$out/obj"
echo "upstream-qemu.sh: built $bin ($ver)"
