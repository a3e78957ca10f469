#!/usr/bin/env bash
# Build the two-stage live OS whose root filesystem comes over NBD:
#   OUTDIR/vmlinuz         the live OS's kernel (build.sh's, copied: the modules
#                          below are its own)
#   OUTDIR/initrd-nbd.img  stage 1: static busybox, the modules for virtio-net,
#                          nbd, dm-verity, squashfs and overlay, ironboot-nbd-root
#                          and veritysetup with their shared libraries, and
#                          tests/liveos/init as /init
#   OUTDIR/root.squashfs   stage 2: busybox, tests/liveos/init as /sbin/init (it
#                          finds /etc/ironboot-stage2 and knows it is stage 2),
#                          and /data/blob, SIZE_MIB MiB of random bytes; data
#                          blocks not compressed (random data does not shrink)
#   OUTDIR/VERSION         the kernel and the sha256 of each half's inputs
# Usage: NBD_ROOT_BIN=target/release/ironboot-nbd-root [SIZE_MIB=2048] \
#            tests/liveos/nbdroot.sh [OUTDIR]      (default tests/.cache/liveos-nbd)
# Runs as root on Debian 12. Runs build.sh first (its kernel, in
# LIVEOS_DIR, default tests/.cache/liveos, and its cached kernel .deb, whose
# modules this takes). Needs veritysetup (cryptsetup-bin) and mksquashfs
# (squashfs-tools). Each half is rebuilt only when its inputs changed: the
# initrd for this script, init, udhcpc.script, busybox, the NBD client,
# veritysetup and its libraries, the kernel; the root for this script, init,
# busybox and SIZE_MIB.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TESTS=$(dirname "$HERE")
OUTDIR=${1:-$TESTS/.cache/liveos-nbd}
LIVEOS_DIR=${LIVEOS_DIR:-$TESTS/.cache/liveos}
DEBDIR=$TESTS/.cache/debs
BUSYBOX=${BUSYBOX:-/bin/busybox}
SIZE_MIB=${SIZE_MIB:-2048}
VERITYSETUP=${VERITYSETUP:-/usr/sbin/veritysetup}
# What stage 1 loads, in this order; dependencies come first (from depends=).
MODULES=(virtio_pci virtio_net nbd dm_mod dm_verity squashfs overlay)

log() { echo "liveos-nbd: $*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (the initramfs needs /dev/console)"
[ -n "${NBD_ROOT_BIN:-}" ] || die "NBD_ROOT_BIN is not set (the path of ironboot-nbd-root)"
[ -x "$NBD_ROOT_BIN" ] || die "NBD_ROOT_BIN=$NBD_ROOT_BIN is not an executable"
case "$SIZE_MIB" in
    '' | *[!0-9]* | 0) die "SIZE_MIB=$SIZE_MIB: expected a number of MiB > 0" ;;
esac
[ -x "$VERITYSETUP" ] || die "$VERITYSETUP not found (apt-get install cryptsetup-bin)"
command -v mksquashfs >/dev/null || die "mksquashfs not found (apt-get install squashfs-tools)"
for t in dpkg-deb gzip sha256sum flock ldd; do
    command -v "$t" >/dev/null || die "$t not found"
done

# --- The kernel: build.sh's -------------------------------------------------
"$HERE/build.sh" "$LIVEOS_DIR"
version_field() { sed -n "s/^$1=//p" "$LIVEOS_DIR/VERSION"; }
KPKG=$(version_field kernel-package)
KVER=$(version_field kernel-version)
KREL=$(version_field kernel-release)
[ -n "$KPKG" ] && [ -n "$KVER" ] && [ -n "$KREL" ] || die "$LIVEOS_DIR/VERSION names no kernel"
DEB=$DEBDIR/${KPKG}_${KVER//:/%3a}_amd64.deb

mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
# One build of OUTDIR at a time.
exec 8>"$OUTDIR/.lock"
flock 8

# The shared libraries (and the loader) ldd lists for each executable given.
libraries() {
    local exe
    for exe in "$@"; do
        ldd "$exe" 2>/dev/null |
            awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' || true
    done | sort -u
}
LIBS=$(libraries "$NBD_ROOT_BIN" "$VERITYSETUP")

sha_of() { cat "$@" | sha256sum | cut -d' ' -f1; }
INITRD_SHA=$(sha_of "$HERE/nbdroot.sh" "$HERE/modules.sh" "$HERE/init" "$HERE/udhcpc.script" "$BUSYBOX" \
    "$NBD_ROOT_BIN" "$VERITYSETUP" $LIBS "$LIVEOS_DIR/VERSION")
ROOT_SHA=$( (sha_of "$HERE/nbdroot.sh" "$HERE/init" "$BUSYBOX"; echo "$SIZE_MIB") |
    sha256sum | cut -d' ' -f1)
# The cached VERSION's value of KEY.
cached() { sed -n "s/^$1=//p" "$OUTDIR/VERSION" 2>/dev/null || true; }

NEED_INITRD=1 NEED_ROOT=1
if [ -s "$OUTDIR/initrd-nbd.img" ] && [ -s "$OUTDIR/vmlinuz" ] &&
    [ "$(cached initrd-inputs-sha256)" = "$INITRD_SHA" ]; then
    NEED_INITRD=0
fi
if [ -s "$OUTDIR/root.squashfs" ] && [ "$(cached root-inputs-sha256)" = "$ROOT_SHA" ]; then
    NEED_ROOT=0
fi
if [ "$NEED_INITRD$NEED_ROOT" = 00 ]; then
    log "up to date: $OUTDIR ($KPKG $KVER, root $SIZE_MIB MiB)"
    exit 0
fi

WORK=$(mktemp -d "$OUTDIR/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# busybox and its applet links into ROOT/bin, /sbin a link to it.
install_busybox() {
    local applet
    mkdir -p "$1/bin"
    cp "$BUSYBOX" "$1/bin/busybox"
    for applet in $("$BUSYBOX" --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$1/bin/$applet"
    done
    ln -s bin "$1/sbin"
}

# --- Stage 1: modules, resolved as build.sh does ----------------------------
# shellcheck source=modules.sh
source "$HERE/modules.sh"

build_initrd() {
    local root=$WORK/initrd pkg=$WORK/pkg lib m
    # build.sh keeps the .deb; the lock keeps a parallel build.sh from
    # replacing it while it is read.
    exec 9>"$DEBDIR/.lock"
    flock 9
    [ -s "$DEB" ] || die "$DEB is missing (build.sh should have kept it)"
    dpkg-deb -x "$DEB" "$pkg"
    flock -u 9
    [ -d "$pkg/lib/modules/$KREL" ] || die "no lib/modules/$KREL in $DEB"
    mkdir -p "$root"/{dev,etc,proc,sys,tmp,run,root,lib/modules/"$KREL"}
    index_modules "$pkg/lib/modules/$KREL"
    for m in "${MODULES[@]}"; do
        add_module "$pkg/lib/modules/$KREL" "$root" "$m"
    done
    printf '%s\n' "${ORDER[@]}" >"$root/etc/liveos-modules"
    log "modules (load order): $(printf '%s ' "${ORDER[@]##*/}")"

    install_busybox "$root"
    install -m 0755 "$HERE/init" "$root/init"
    install -m 0755 "$HERE/udhcpc.script" "$root/udhcpc.script"
    install -m 0755 "$NBD_ROOT_BIN" "$root/bin/ironboot-nbd-root"
    install -m 0755 "$VERITYSETUP" "$root/bin/veritysetup"
    for lib in $LIBS; do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
    log "libraries: $(echo $LIBS)"
    mknod -m 0600 "$root/dev/console" c 5 1
    mknod -m 0666 "$root/dev/null" c 1 3
    chmod 1777 "$root/tmp"
    printf 'kernel-release=%s\ninitrd-inputs-sha256=%s\n' "$KREL" "$INITRD_SHA" \
        >"$root/etc/liveos-version"
    find "$root" -exec touch -h -d @0 {} +
    (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc 2>/dev/null) |
        gzip -n -6 >"$WORK/initrd-nbd.img"
    cp "$LIVEOS_DIR/vmlinuz" "$WORK/vmlinuz"
}

# --- Stage 2: the root image ------------------------------------------------
build_root() {
    local root=$WORK/root
    mkdir -p "$root"/{dev,etc,proc,sys,tmp,run,root,data}
    install_busybox "$root"
    rm "$root/bin/init" # busybox's applet: this init replaces it
    install -m 0755 "$HERE/init" "$root/bin/init"
    echo "ironboot-nbd-root stage 2 (tests/liveos/nbdroot.sh)" >"$root/etc/ironboot-stage2"
    chmod 1777 "$root/tmp"
    log "root: mksquashfs with a $SIZE_MIB MiB random /data/blob"
    # The blob comes from a pseudo file (mksquashfs reads the command's
    # output): it is never written to disk but once, in the image.
    mksquashfs "$root" "$WORK/root.squashfs" -noappend -quiet -no-progress \
        -noD -no-duplicates -no-xattrs -all-root -mkfs-time 0 -all-time 0 \
        -p "data/blob f 0444 0 0 head -c $((SIZE_MIB * 1048576)) /dev/urandom" >&2
}

START=$(date +%s)
if [ "$NEED_INITRD" = 1 ]; then
    build_initrd
fi
if [ "$NEED_ROOT" = 1 ]; then
    build_root
fi

# --- Install ----------------------------------------------------------------
rm -f "$OUTDIR/VERSION"
for f in vmlinuz initrd-nbd.img root.squashfs; do
    [ ! -e "$WORK/$f" ] || mv -f "$WORK/$f" "$OUTDIR/$f"
done
cat >"$OUTDIR/VERSION.tmp" <<EOF
kernel-package=$KPKG
kernel-version=$KVER
kernel-release=$KREL
initrd-inputs-sha256=$INITRD_SHA
root-inputs-sha256=$ROOT_SHA
root-size-mib=$SIZE_MIB
EOF
mv -f "$OUTDIR/VERSION.tmp" "$OUTDIR/VERSION"
log "built $OUTDIR in $(($(date +%s) - START)) s: initrd-nbd.img $(stat -c %s "$OUTDIR/initrd-nbd.img") bytes," \
    "root.squashfs $(stat -c %s "$OUTDIR/root.squashfs") bytes ($KPKG $KVER)"
