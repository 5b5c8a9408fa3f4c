#!/bin/bash
# Fetch Debian bookworm's qemu source package and unpack it, with Debian's
# patches applied, into build/pristine.  Refuses anything but upstream 7.2.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
dl=$top/build/dl
pristine=$top/build/pristine

[ -f "$pristine/.unpacked" ] && exit 0

mkdir -p "$dl"
cd "$dl"
if ! ls qemu_*.dsc >/dev/null 2>&1; then
    apt-get source --download-only -qq qemu
fi
dsc=$(ls qemu_*.dsc | sort -V | tail -1)
ver=$(sed -n 's/^Version: //p' "$dsc")
upstream=${ver#*:}
upstream=${upstream%%+*}
upstream=${upstream%%-*}
if [ "$upstream" != 7.2 ]; then
    echo "fetch.sh: Debian's qemu source is upstream $upstream ($ver); qemu-cpr needs 7.2" >&2
    exit 1
fi
rm -rf "$pristine" "$pristine.tmp"
dpkg-source --no-check -x "$dsc" "$pristine.tmp" >/dev/null
echo "$ver" >"$pristine.tmp/.debian-version"
touch "$pristine.tmp/.unpacked"
mv "$pristine.tmp" "$pristine"
echo "fetch.sh: unpacked qemu $ver"
