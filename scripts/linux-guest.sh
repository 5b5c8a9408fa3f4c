#!/bin/bash
# Build the Linux test guest into build/guest/linux: Debian's
# linux-image-amd64 kernel and an initramfs of busybox-static, the virtio,
# ACPI button and evdev modules, and our workload (tests/guest/workload.c)
# as init.  Rebuilt only when this script or the workload changes.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out=$top/build/guest/linux
want="$(cat "$0" "$top/tests/guest/workload.c" | sha256sum | cut -c1-16)"
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$want" ]; then
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
dl() {
    apt-get -q -o APT::Sandbox::User=root download "$@" >/dev/null
}
dl linux-image-amd64 busybox-static
kpkg=$(dpkg-deb -f linux-image-amd64_*.deb Depends | sed 's/[ ,(].*//')
dl "$kpkg"
mkdir pkg
for d in *.deb; do
    dpkg -x "$d" pkg
done
kver=$(ls pkg/lib/modules)
mods=pkg/lib/modules/$kver
depmod -b "$work/pkg" "$kver"

# Modules the guest needs, dependencies first, from modules.dep.
want_mods="virtio_pci virtio_blk virtio_net button evdev"
order=()
add_mod() {
    local name=$1 line path dep
    line=$(grep -E "(^|/)$name\.ko:" "$mods/modules.dep") || {
        echo "linux-guest.sh: no module $name in $kver" >&2
        exit 1
    }
    path=${line%%:*}
    for dep in ${line#*:}; do
        dep=$(basename "$dep" .ko)
        add_mod "$dep"
    done
    for dep in "${order[@]}"; do
        [ "$dep" = "$path" ] && return 0
    done
    order+=("$path")
}
for m in $want_mods; do
    add_mod "$m"
done

root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,lib/modules}
cp pkg/bin/busybox "$root/bin/busybox"
for m in "${order[@]}"; do
    cp "$mods/$m" "$root/lib/modules/"
    basename "$m" >>"$root/modules.order"
done
gcc -static -O2 -Wall -Werror -pthread -o "$root/workload" \
    "$top/tests/guest/workload.c"
cat >"$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do
    insmod /lib/modules/$m
done
ip=$(sed -n 's/.*cpr\.ip=\([^ ]*\).*/\1/p' /proc/cmdline)
ip link set lo up
if [ -n "$ip" ] && [ -e /sys/class/net/eth0 ]; then
    ip addr add "$ip" dev eth0
    ip link set eth0 up
fi
exec /workload
EOF
chmod 755 "$root/init" "$root/bin/busybox"
mkdir -p "$out"
(cd "$root" && find . | cpio -o -H newc --quiet) | gzip -1 >"$out/initrd.img.tmp"
cp "pkg/boot/vmlinuz-$kver" "$out/vmlinuz.tmp"
mv "$out/initrd.img.tmp" "$out/initrd.img"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
echo "$kver" >"$out/kernel-version"
echo "$want" >"$out/stamp"
