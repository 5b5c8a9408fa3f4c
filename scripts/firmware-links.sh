#!/bin/bash
# A QEMU binary run from its build tree OBJDIR looks for firmware under
# OBJDIR/qemu-bundle/; point that at Debian's firmware packages.
#
#   scripts/firmware-links.sh OBJDIR
set -euo pipefail
obj=$1
for d in /usr/share/qemu /usr/share/seabios /usr/lib/ipxe/qemu; do
    mkdir -p "$obj/qemu-bundle$d"
    for f in "$d"/*; do
        [ -e "$obj/qemu-bundle$f" ] || ln -s "$f" "$obj/qemu-bundle$f"
    done
done
