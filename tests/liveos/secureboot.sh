#!/usr/bin/env bash
# The Secure Boot files the end-to-end tests need, from Debian's archive,
# extracted (never installed: shim-signed's and grub-efi-amd64-signed's
# maintainer scripts would touch this machine's own boot loader):
#   OUTDIR/shimx64.efi.signed     shim-signed (Microsoft-signed shim)
#   OUTDIR/grubnetx64.efi.signed  grub-efi-amd64-signed (Debian-signed netboot GRUB)
#   OUTDIR/linuxx64.efi.stub      systemd-boot-efi (the stub of a unified kernel image)
#   OUTDIR/VERSION                the package versions
# Usage: tests/liveos/secureboot.sh [OUTDIR]   (default tests/.cache/secureboot)
# Runs as root on Debian 12 with apt; downloaded .debs are kept in
# tests/.cache/debs. When VERSION matches the candidates, it does nothing.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TESTS=$(dirname "$HERE")
OUTDIR=${1:-$TESTS/.cache/secureboot}
DEBDIR=$TESTS/.cache/debs

log() { echo "secureboot: $*" >&2; }
die() { log "error: $*"; exit 1; }

for t in apt-cache apt-get dpkg-deb flock; do
    command -v "$t" >/dev/null || die "$t not found"
done
mkdir -p "$OUTDIR" "$DEBDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
exec 9>"$DEBDIR/.lock"
flock 9

# package  file in the package  name in OUTDIR
FILES=(
    "shim-signed usr/lib/shim/shimx64.efi.signed shimx64.efi.signed"
    "grub-efi-amd64-signed usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed grubnetx64.efi.signed"
    "systemd-boot-efi usr/lib/systemd/boot/efi/linuxx64.efi.stub linuxx64.efi.stub"
)

candidate() {
    apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" { print $2; exit }'
}

versions=
for entry in "${FILES[@]}"; do
    read -r pkg _ _ <<<"$entry"
    ver=$(candidate "$pkg")
    if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
        log "apt-cache does not know $pkg: apt-get update"
        apt-get update -q >&2
        ver=$(candidate "$pkg")
    fi
    [ -n "$ver" ] && [ "$ver" != "(none)" ] || die "no candidate version of $pkg"
    versions+="$pkg=$ver"$'\n'
done

if [ -f "$OUTDIR/VERSION" ] && [ "$(cat "$OUTDIR/VERSION")" = "${versions%$'\n'}" ]; then
    all=1
    for entry in "${FILES[@]}"; do
        read -r _ _ name <<<"$entry"
        [ -s "$OUTDIR/$name" ] || all=0
    done
    if [ "$all" = 1 ]; then
        log "up to date in $OUTDIR"
        exit 0
    fi
fi

for entry in "${FILES[@]}"; do
    read -r pkg path name <<<"$entry"
    ver=$(candidate "$pkg")
    deb=$DEBDIR/${pkg}_${ver//:/%3a}_amd64.deb
    if [ ! -s "$deb" ]; then
        log "downloading $pkg=$ver"
        dl=$(mktemp -d "$DEBDIR/.dl.XXXXXX")
        (cd "$dl" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$ver" >&2)
        got=("$dl"/*.deb)
        [ -s "${got[0]}" ] || die "apt-get download $pkg gave no .deb"
        mv "${got[0]}" "$deb"
        rmdir "$dl"
    fi
    tree=$(mktemp -d)
    dpkg-deb -x "$deb" "$tree"
    [ -s "$tree/$path" ] || { rm -rf "$tree"; die "$pkg has no $path"; }
    cp "$tree/$path" "$OUTDIR/$name.tmp"
    mv "$OUTDIR/$name.tmp" "$OUTDIR/$name"
    rm -rf "$tree"
done
printf '%s' "${versions%$'\n'}" >"$OUTDIR/VERSION"
log "ready in $OUTDIR"
