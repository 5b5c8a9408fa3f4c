#!/bin/bash
# Build the Linux test guest into build/guest/linux: Debian's
# linux-image-amd64 kernel and an initramfs of busybox-static, the virtio,
# ACPI button and evdev modules, and our workload (tests/guest/workload.c)
# as init.  Rebuilt only when this script or the workload changes.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/scripts/guest-lib.sh"
out=$top/build/guest/linux
stamp_check "$out" "$0" "$top/scripts/guest-lib.sh" \
    "$top/tests/guest/workload.c"
new_root
install_modules "$root" virtio_pci virtio_blk virtio_net button evdev
gcc -static -O2 -Wall -Werror -pthread -o "$root/workload" \
    "$top/tests/guest/workload.c"
write_init <<'EOF'
ip=$(sed -n 's/.*cpr\.ip=\([^ ]*\).*/\1/p' /proc/cmdline)
ip link set lo up
if [ -n "$ip" ] && [ -e /sys/class/net/eth0 ]; then
    ip addr add "$ip" dev eth0
    ip link set eth0 up
fi
exec /workload
EOF
finish_image "$out"
