#!/bin/bash
# Build the Linux test guest into build/guest/linux: Debian's
# linux-image-amd64 kernel and an initramfs of busybox-static, the virtio,
# ACPI button and evdev modules, and our workload (tests/guest/workload.c)
# as init.  Rebuilt only when this script or the workload changes.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/scripts/guest-lib.sh"
out=$top/build/guest/linux
want="$(cat "$0" "$top/scripts/guest-lib.sh" "$top/tests/guest/workload.c" |
        sha256sum | cut -c1-16)"
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$want" ]; then
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
fetch_kernel "$work"
root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys}
cp pkg/bin/busybox "$root/bin/busybox"
install_modules "$root" virtio_pci virtio_blk virtio_net button evdev
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
pack_initrd "$root" "$out/initrd.img"
cp "pkg/boot/vmlinuz-$kver" "$out/vmlinuz.tmp"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
echo "$kver" >"$out/kernel-version"
echo "$want" >"$out/stamp"
