#!/bin/bash
# Make build/src: the pristine Debian tree + patches/ + our overlay files.
#
# Overlay files (scripts/overlay.list) are symlinked, so editing one in the
# repository and re-running the build recompiles just that file.  When the
# patch series changes, build/src is re-synced from build/pristine (keeping
# timestamps of untouched files, so the rebuild stays incremental) and the
# whole series is applied again; a patch that does not apply stops the build.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
pristine=$top/build/pristine
src=$top/build/src
stamp=$src/.cpr-patches

[ -f "$pristine/.unpacked" ] || { echo "prepare.sh: run scripts/fetch.sh first" >&2; exit 1; }

want=$( (cd "$top" && for p in patches/*.patch; do if [ -e "$p" ]; then echo "$p"; cat "$p"; fi; done) | sha256sum | cut -c1-32)
# The files the patch series touches
patched_files() {
    sed -n 's|^+++ b/\([^[:space:]]*\).*|\1|p' "$top"/patches/*.patch | sort -u
}

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    mkdir -p "$src"
    rm -f "$stamp"
    rsync -a --delete --exclude=/.cpr-patches --exclude=/.cpr-patched \
        "$pristine/" "$src/"
    for p in "$top"/patches/*.patch; do
        [ -e "$p" ] || continue
        if ! patch -d "$src" -p1 -s --no-backup-if-mismatch -r - <"$p"; then
            echo "prepare.sh: patch $(basename "$p") does not apply" >&2
            exit 1
        fi
    done
    # A file that a patch no longer touches is back to the pristine one,
    # with its old time stamp: touch it, or the build keeps the old object.
    { cat "$src/.cpr-patched" 2>/dev/null || true; patched_files; } |
        sort -u |
    while read -r f; do
        if [ -f "$src/$f" ]; then
            touch "$src/$f"
        fi
    done
    patched_files >"$src/.cpr-patched"
    echo "$want" >"$stamp"
fi

while read -r f; do
    case "$f" in ''|'#'*) continue ;; esac
    [ -f "$top/$f" ] || { echo "prepare.sh: overlay file $f missing" >&2; exit 1; }
    mkdir -p "$(dirname "$src/$f")"
    if [ "$(readlink "$src/$f" 2>/dev/null)" != "$top/$f" ]; then
        ln -sfn "$top/$f" "$src/$f"
    fi
done <"$top/scripts/overlay.list"
