#!/bin/bash
# Build the Debian package "qemu-cpr": our qemu-system-x86_64 for bookworm.
#
#   scripts/deb.sh [OBJDIR [VERSION [OUTDIR]]]
#
# OBJDIR: the build to package (build/obj); VERSION: the package version,
# by default Debian's version of the QEMU source we patch plus "+cprN",
# N the number of commits on this branch (so each commit's package
# upgrades the one before); OUTDIR: where the .deb goes (build).  Prints
# the path of the package.
#
# The package installs /usr/bin/qemu-system-x86_64 and diverts Debian's
# file of that name (qemu-system-x86's, if it is installed or installed
# later) to /usr/bin/qemu-system-x86_64.distrib; removing the package
# removes the diversion, and Debian's binary is back in place.  Firmware
# and data files come from Debian's packages (the build looks for them in
# /usr/share/qemu, /usr/share/seabios and /usr/lib/ipxe/qemu).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
obj=${1:-$top/build/obj}
out=${3:-$top/build}
debver=$(cat "$top/build/pristine/.debian-version")
if [ -n "${2:-}" ]; then
    version=$2
else
    version="$debver+cpr$(git -C "$top" rev-list --count HEAD 2>/dev/null ||
                           echo 0)"
fi
upstream=${debver#*:}
upstream=${upstream%%-*}
epoch=${debver%%:*}
base=${upstream%%+*}
next=$(echo "$base" | awk -F. '{ print $1 "." $2 + 1 }')
bin=usr/bin/qemu-system-x86_64
doc=usr/share/doc/qemu-cpr

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/pkg/DEBIAN" "$stage/pkg/usr/bin" "$stage/pkg/$doc" \
         "$stage/debian"
# A build carries its debug information; the package does not.
objcopy --strip-debug --strip-unneeded "$obj/qemu-system-x86_64" \
        "$stage/pkg/$bin"
chmod 0755 "$stage/pkg/$bin"
gzip -9n <"$top/docs/cpr.rst" >"$stage/pkg/$doc/cpr.rst.gz"
gzip -9n <"$top/README.md" >"$stage/pkg/$doc/README.md.gz"
cat >"$stage/pkg/$doc/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: qemu-cpr (QEMU $upstream with the qemu-cpr patch set)

Files: *
Copyright: QEMU's contributors; the qemu-cpr authors
License: GPL-2+
 On Debian systems, the complete text of the GNU General Public License
 version 2 can be found in /usr/share/common-licenses/GPL-2.
EOF

# The shared libraries the binary needs, as Debian names their packages
printf 'Source: qemu-cpr\n\nPackage: qemu-cpr\nArchitecture: amd64\n' \
    >"$stage/debian/control"
shlibs=$(cd "$stage" && dpkg-shlibdeps -O "pkg/$bin" 2>/dev/null |
         sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || { echo "deb.sh: dpkg-shlibdeps found nothing" >&2; exit 1; }

cat >"$stage/pkg/DEBIAN/control" <<EOF
Package: qemu-cpr
Version: $version
Architecture: amd64
Maintainer: qemu-cpr authors <root@localhost>
Installed-Size: $(du -sk "$stage/pkg/usr" | cut -f1)
Depends: $shlibs, qemu-system-data (>= $epoch:$base~), qemu-system-data (<< $epoch:$next~), seabios, ipxe-qemu
Recommends: qemu-utils
Section: otherosfs
Priority: optional
Homepage: https://www.qemu.org/
Description: QEMU x86_64 system emulator with live update (cprsave/cprload)
 Debian's QEMU ($debver) with the qemu-cpr patch set:
 QMP cprsave/cprload update a running VM to a new QEMU binary (restart:
 the same PID; transfer: a new process) with guest RAM and devices kept,
 reboot mode saves a VM across a host kernel restart, and in-process
 snapshots, VM fork and live checkpoints.
 .
 Installs /usr/bin/qemu-system-x86_64 and diverts Debian's
 (qemu-system-x86) to /usr/bin/qemu-system-x86_64.distrib; removing this
 package puts Debian's back.  Firmware and data come from Debian's
 packages.
EOF
cat >"$stage/pkg/DEBIAN/preinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = install ] || [ "$1" = upgrade ]; then
    dpkg-divert --package qemu-cpr --add --rename \
        --divert /usr/bin/qemu-system-x86_64.distrib /usr/bin/qemu-system-x86_64
fi
EOF
cat >"$stage/pkg/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = remove ] || [ "$1" = abort-install ] || [ "$1" = disappear ]; then
    dpkg-divert --package qemu-cpr --remove --rename \
        --divert /usr/bin/qemu-system-x86_64.distrib /usr/bin/qemu-system-x86_64
fi
EOF
chmod 0755 "$stage/pkg/DEBIAN/preinst" "$stage/pkg/DEBIAN/postrm"

mkdir -p "$out"
deb=$out/qemu-cpr_${version#*:}_amd64.deb
dpkg-deb --root-owner-group -Zxz --build "$stage/pkg" "$deb" >/dev/null
echo "$deb"
