# Shared by the guest image builders (sourced): Debian's kernel and
# busybox-static, and kernel modules in dependency order.

# stamp_check OUT FILE...: exit if OUT/stamp holds the hash of the FILEs
# (the image is up to date); else remember the hash for stamp_write.
stamp_check() {
    local out=$1
    shift
    stamp_want=$(cat "$@" | sha256sum | cut -c1-16)
    if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp_want" ]; then
        exit 0
    fi
}

stamp_write() {
    echo "$stamp_want" >"$1/stamp"
}

# new_root: a work directory (removed on exit) with the kernel packages,
# and an initramfs tree in it with busybox; sets work and root.
new_root() {
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    fetch_kernel "$work"
    root=$work/root
    mkdir -p "$root"/{bin,dev,proc,sys,tmp}
    cp "$work/pkg/bin/busybox" "$root/bin/busybox"
}

# fetch_kernel DIR: download and unpack linux-image-amd64 (the package it
# depends on) and busybox-static into DIR/pkg; sets kver and mods.
fetch_kernel() {
    local dir=$1 kpkg d
    (
        cd "$dir"
        apt-get -q -o APT::Sandbox::User=root download \
            linux-image-amd64 busybox-static >/dev/null
        kpkg=$(dpkg-deb -f linux-image-amd64_*.deb Depends | sed 's/[ ,(].*//')
        apt-get -q -o APT::Sandbox::User=root download "$kpkg" >/dev/null
        mkdir -p pkg
        for d in *.deb; do
            dpkg -x "$d" pkg
        done
    )
    kver=$(ls "$dir/pkg/lib/modules")
    mods=$dir/pkg/lib/modules/$kver
    depmod -b "$dir/pkg" "$kver"
}

# add_mod NAME: append NAME's module file (after its dependencies) to the
# array mod_order, relative to $mods.
mod_order=()
add_mod() {
    local name=$1 line path dep
    line=$(grep -E "(^|/)$name\.ko:" "$mods/modules.dep") || {
        echo "no module $name in $kver" >&2
        exit 1
    }
    path=${line%%:*}
    for dep in ${line#*:}; do
        add_mod "$(basename "$dep" .ko)"
    done
    for dep in "${mod_order[@]}"; do
        [ "$dep" = "$path" ] && return 0
    done
    mod_order+=("$path")
}

# install_modules ROOT NAME...: copy the modules and their dependencies to
# ROOT/lib/modules and list them, in load order, in ROOT/modules.order.
install_modules() {
    local root=$1 m
    shift
    for m in "$@"; do
        add_mod "$m"
    done
    mkdir -p "$root/lib/modules"
    for m in "${mod_order[@]}"; do
        cp "$mods/$m" "$root/lib/modules/"
        basename "$m" >>"$root/modules.order"
    done
}

# write_init: ROOT/init mounts /proc, /sys, /dev and /tmp and loads the
# modules, then runs the shell commands read from standard input.
write_init() {
    {
        cat <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
for m in $(cat /modules.order); do
    insmod /lib/modules/$m
done
EOF
        cat
    } >"$root/init"
    chmod 755 "$root/init" "$root/bin/busybox"
}

# finish_image OUT: pack the initramfs and copy the kernel into OUT.
finish_image() {
    mkdir -p "$1"
    pack_initrd "$root" "$1/initrd.img"
    cp "$work/pkg/boot/vmlinuz-$kver" "$1/vmlinuz.tmp"
    mv "$1/vmlinuz.tmp" "$1/vmlinuz"
    echo "$kver" >"$1/kernel-version"
    stamp_write "$1"
}

# pack_initrd ROOT OUT: a gzip'd newc cpio of ROOT.
pack_initrd() {
    (cd "$1" && find . | cpio -o -H newc --quiet) | gzip -1 >"$2.tmp"
    mv "$2.tmp" "$2"
}
