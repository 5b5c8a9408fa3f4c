#!/bin/bash
# Regenerate one patch of the series from the edited tree in build/src.
#
#   scripts/regen-patch.sh patches/NNNN-name.patch [FILE...]
#
# FILEs are paths inside the QEMU tree; without them, the files the patch
# already touches are used.  The patch becomes the difference, for those
# files, between the tree with the patches before it applied and build/src
# with the patches after it taken out again, so one purpose stays in one
# patch even when a later patch edits the same file.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
target=$1
shift
name=$(basename "$target")
src=$top/build/src
pristine=$top/build/pristine

files=("$@")
if [ ${#files[@]} = 0 ]; then
    [ -f "$target" ] || { echo "regen-patch.sh: name the files for a new patch" >&2; exit 1; }
    mapfile -t files < <(sed -n 's|^+++ b/\([^[:space:]]*\).*|\1|p' "$target")
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/a" "$tmp/b"
for f in "${files[@]}"; do
    mkdir -p "$(dirname "$tmp/a/$f")" "$(dirname "$tmp/b/$f")"
    if [ -f "$pristine/$f" ]; then cp "$pristine/$f" "$tmp/a/$f"; fi
    cp "$src/$f" "$tmp/b/$f"
done

# Only the hunks of other patches that touch our files matter.
filter() {
    local p=$1 f
    for f in "${files[@]}"; do
        if grep -q "^+++ b/$f\([[:space:]]\|$\)" "$p"; then
            return 0
        fi
    done
    return 1
}
for p in "$top"/patches/*.patch; do
    [ -e "$p" ] || continue
    pn=$(basename "$p")
    [ "$pn" = "$name" ] && continue
    filter "$p" || continue
    if [[ "$pn" < "$name" ]]; then
        (cd "$tmp/a" && patch -p1 -s --no-backup-if-mismatch -f <"$p" >/dev/null) || true
    else
        (cd "$tmp/b" && patch -R -p1 -s --no-backup-if-mismatch -f <"$p" >/dev/null) || true
    fi
done

out=$tmp/out.patch
{
    if [ -f "$target" ]; then
        sed -n '1,/^---$/p' "$target"
    else
        printf 'Subject: %s\n\nDescribe the change.\n---\n' "${name%.patch}"
    fi
    for f in "${files[@]}"; do
        (cd "$tmp" && diff -u --label "a/$f" --label "b/$f" "a/$f" "b/$f") || true
    done
} >"$out"
mv "$out" "$target"
echo "regen-patch.sh: wrote $target"
