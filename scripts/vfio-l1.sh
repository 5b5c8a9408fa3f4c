#!/bin/bash
# Build the L1 guest of the VFIO test into build/guest/vfio-l1: Debian's
# kernel and an initramfs with busybox, the VFIO modules, our QEMU (with
# its shared libraries and the firmware it needs), the L2 guests
# (tests/guest/edu-guest.c, nvme-guest.c) and the test program that runs
# inside L1 (tests/e2e/vfio-l1.c).  Rebuilt when any of them changes.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/scripts/guest-lib.sh"
out=$top/build/guest/vfio-l1
qemu=$(readlink -f "$top/build/qemu-system-x86_64")
stamp_check "$out" "$0" "$top/scripts/guest-lib.sh" \
    "$top"/tests/guest/{l2.h,l2.c,l2.ld,edu-guest.c,nvme-guest.c} \
    "$top/tests/e2e/vfio-l1.c" "$qemu"
new_root
mkdir -p "$root"/{usr/bin,usr/share/qemu}
install_modules "$root" vfio_iommu_type1 vfio-pci

# QEMU, the libraries it links and the firmware an L2 guest needs
cp "$qemu" "$root/usr/bin/qemu-system-x86_64"
ldd "$qemu" | awk '/=> \// { print $3 } /^\t\/lib/ { print $1 }' |
while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
for f in seabios/bios-256k.bin qemu/multiboot_dma.bin \
         qemu/linuxboot_dma.bin qemu/kvmvapic.bin; do
    cp -L "/usr/share/$f" "$root/usr/share/qemu/"
done

# The L2 guests and the test
cflags=(-m32 -ffreestanding -fno-pic -fno-stack-protector -nostdlib -O2
        -Wall -Werror)
gcc "${cflags[@]}" -c -o "$work/l2.o" "$top/tests/guest/l2.c"
for guest in edu-guest nvme-guest; do
    gcc "${cflags[@]}" -c -o "$work/$guest.o" "$top/tests/guest/$guest.c"
    ld -m elf_i386 --no-warn-rwx-segments -T "$top/tests/guest/l2.ld" \
        -o "$root/$guest.elf" "$work/l2.o" "$work/$guest.o"
done
gcc -static -O2 -Wall -Werror -o "$root/vfio-l1" "$top/tests/e2e/vfio-l1.c"

write_init <<'EOF'
/vfio-l1
echo "vfio-l1: exit $?"
poweroff -f
EOF
finish_image "$out"
