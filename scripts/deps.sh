#!/bin/bash
# Install what building and testing qemu-cpr needs, from Debian's packages.
# deb-src entries are derived from the machine's own apt sources; no
# registry host is written here.
set -euo pipefail

[ "$(id -u)" = 0 ] || { echo "deps.sh: run as root" >&2; exit 1; }

enable_deb_src() {
    local out=/etc/apt/sources.list.d/qemu-cpr-src.sources
    local f
    if apt-get indextargets --format '$(CREATED_BY)' 2>/dev/null | grep -qx Sources; then
        return 0
    fi
    : >"$out.tmp"
    # deb822 files: copy each stanza that provides "deb" as "deb-src".
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -e "$f" ] || continue
        [ "$f" = "$out" ] && continue
        awk 'BEGIN { RS = ""; ORS = "\n\n" }
             {
                 n = split($0, l, "\n"); deb = 0; off = 0
                 for (i = 1; i <= n; i++) {
                     if (l[i] ~ /^Types:/ && (" " l[i] " ") ~ / deb /) deb = 1
                     if (l[i] ~ /^Enabled: *no/) off = 1
                 }
                 if (!deb || off) next
                 out = ""
                 for (i = 1; i <= n; i++) {
                     if (l[i] ~ /^Types:/) l[i] = "Types: deb-src"
                     out = out l[i] "\n"
                 }
                 printf "%s\n", out
             }' "$f" >>"$out.tmp"
    done
    # one-line format
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -e "$f" ] || continue
        grep -E '^deb ' "$f" | sed 's/^deb /deb-src /' >>"${out%.sources}.list.tmp" || true
    done
    mv "$out.tmp" "$out"
    if [ -s "${out%.sources}.list.tmp" ]; then
        mv "${out%.sources}.list.tmp" "${out%.sources}.list"
    else
        rm -f "${out%.sources}.list.tmp"
    fi
    apt-get update -qq
}

stamp=/var/lib/qemu-cpr-deps.stamp
want="v1 $(sha256sum "$0" | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
enable_deb_src
# QEMU's build dependencies as Debian names them, limited to what an
# x86_64-softmmu TCG/KVM build with the options in scripts/build.sh needs.
apt-get install -y -qq --no-install-recommends \
    dpkg-dev build-essential ninja-build meson pkg-config python3 python3-venv \
    libglib2.0-dev libpixman-1-dev zlib1g-dev libfdt-dev libcap-ng-dev \
    libattr1-dev libaio-dev liburing-dev libzstd-dev libslirp-dev \
    libseccomp-dev \
    flex bison quilt patch rsync perl \
    seabios ipxe-qemu qemu-system-data qemu-system-x86 \
    binutils socat iproute2 procps cpio kmod gzip \
    libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients dbus \
    clang-14 libclang-rt-14-dev llvm-14 \
    >/dev/null
echo "$want" >"$stamp"
