# Shared by the guest image builders (sourced): Debian's kernel and
# busybox-static, and kernel modules in dependency order.

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

# pack_initrd ROOT OUT: a gzip'd newc cpio of ROOT.
pack_initrd() {
    (cd "$1" && find . | cpio -o -H newc --quiet) | gzip -1 >"$2.tmp"
    mv "$2.tmp" "$2"
}
