#!/bin/bash
# Build the L1 guest of the VFIO test into build/guest/vfio-l1: Debian's
# kernel and an initramfs with busybox, the VFIO modules, our QEMU (with
# its shared libraries and the firmware it needs), the L2 guests
# (tests/guest/edu-guest.c, nvme-guest.c) and the test program that runs
# inside L1 (tests/e2e/vfio-l1.c).  Rebuilt when any of them changes.
# The same L1 runs the reboot-mode test (tests/e2e/reboot-l1.py, kernel
# argument cpr.test=reboot): with the boot-sector guest, a virtio disk
# with ext4 and kexec from Debian's kexec-tools.  And the vhost-net test
# (tests/e2e/vhost-update.py, cpr.test=vhost): tun and vhost_net, the L2
# guest tests/guest/net-guest.c and tests/e2e/vhost-l1.c.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/scripts/guest-lib.sh"
out=$top/build/guest/vfio-l1
qemu=$(readlink -f "$top/build/qemu-system-x86_64")
stamp_check "$out" "$0" "$top/scripts/guest-lib.sh" \
    "$top"/tests/guest/{l2.h,l2.c,l2.ld,edu-guest.c,nvme-guest.c,net-guest.c} \
    "$top"/tests/e2e/{vfio-l1.c,vhost-l1.c,l1-lib.c,l1-lib.h} "$qemu" \
    "$top/build/guest/cpr-guest.img"
new_root
mkdir -p "$root"/{usr/bin,usr/share/qemu,mnt}
install_modules "$root" vfio_iommu_type1 vfio-pci virtio_pci virtio_blk \
    crc32c_generic ext4 tun vhost_net
cp "$top/build/guest/cpr-guest.img" "$root/cpr-guest.img"

# kexec, with the Xen libraries Debian links it with (not on the host)
xenmisc=$(apt-cache depends kexec-tools | sed -n 's/.*Depends: \(libxenmisc.*\)/\1/p')
# shellcheck disable=SC2086
xenlibs=$(apt-cache depends --recurse "$xenmisc" |
          sed -n 's/.*Depends: \(libxen.*\|libyajl.*\)/\1/p' | sort -u)
mkdir "$work/kexec"
# shellcheck disable=SC2086
(cd "$work/kexec" && apt-get -q -o APT::Sandbox::User=root download \
    kexec-tools "$xenmisc" $xenlibs >/dev/null &&
    for d in *.deb; do dpkg -x "$d" .; done)
cp "$work/kexec/sbin/kexec" "$root/bin/kexec"

# QEMU, the libraries it links and the firmware an L2 guest needs
cp "$qemu" "$root/usr/bin/qemu-system-x86_64"
{ ldd "$qemu"
  LD_LIBRARY_PATH=$work/kexec/usr/lib/x86_64-linux-gnu ldd "$root/bin/kexec"
} | awk '/=> \// { print $3 } /^\t\/lib/ { print $1 }' |
while read -r lib; do
    dest=$root${lib#"$work/kexec"}
    mkdir -p "$(dirname "$dest")"
    cp -L "$lib" "$dest"
done
for f in seabios/bios-256k.bin qemu/multiboot_dma.bin \
         qemu/linuxboot_dma.bin qemu/kvmvapic.bin; do
    cp -L "/usr/share/$f" "$root/usr/share/qemu/"
done

# The L2 guests and the test
cflags=(-m32 -ffreestanding -fno-pic -fno-stack-protector -nostdlib -O2
        -Wall -Werror)
gcc "${cflags[@]}" -c -o "$work/l2.o" "$top/tests/guest/l2.c"
for guest in edu-guest nvme-guest net-guest; do
    gcc "${cflags[@]}" -c -o "$work/$guest.o" "$top/tests/guest/$guest.c"
    ld -m elf_i386 --no-warn-rwx-segments -T "$top/tests/guest/l2.ld" \
        -o "$root/$guest.elf" "$work/l2.o" "$work/$guest.o"
done
for prog in vfio-l1 vhost-l1; do
    gcc -static -pthread -O2 -Wall -Werror -o "$root/$prog" \
        "$top/tests/e2e/$prog.c" "$top/tests/e2e/l1-lib.c"
done

write_init <<'EOF'
if grep -q cpr.test=vhost /proc/cmdline; then
    /vhost-l1
    echo "vhost-l1: exit $?"
    poweroff -f
fi
if ! grep -q cpr.test=reboot /proc/cmdline; then
    /vfio-l1
    echo "vfio-l1: exit $?"
    poweroff -f
fi
# Reboot mode: the first boot saves L2 to the disk and restarts this
# kernel with kexec (a reset of the machine if kexec fails); the second
# restores it.
for i in $(seq 100); do
    [ -b /dev/vda ] && break
    sleep 0.1
done
if ! mount -t ext4 /dev/vda /mnt; then
    echo "not ok - L1 mounts its disk"
    poweroff -f
fi
if [ -f /mnt/vm.cpr ]; then
    /vfio-l1 reboot-load /mnt
    echo "vfio-l1: exit $?"
    umount /mnt
    poweroff -f
fi
if /vfio-l1 reboot-save /mnt; then
    if kexec -l /mnt/vmlinuz --initrd=/mnt/initrd.img --reuse-cmdline; then
        echo -n kexec >/mnt/restart
        sync
        umount /mnt
        kexec -e
        mount -t ext4 /dev/vda /mnt
    fi
    echo "# kexec did not restart the kernel; resetting the machine"
    echo -n "reset of the machine" >/mnt/restart
    sync
    umount /mnt
    reboot -f
fi
echo "vfio-l1: exit 1"
poweroff -f
EOF
finish_image "$out"
