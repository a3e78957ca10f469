#!/usr/bin/env bash
# Build the small live OS that the end-to-end tests network-boot in QEMU:
#   OUTDIR/vmlinuz     Debian's cloud kernel (virtio drivers, LZ4: fast under TCG)
#   OUTDIR/initrd.img  static busybox, the virtio-net modules, tests/liveos/init
#   OUTDIR/VERSION     kernel package and version + sha256 of the inputs
# and, for arm64 only:
#   OUTDIR/grubnetaa64.efi  Debian's netboot GRUB (grub-efi-arm64-bin), the
#                           loader arm64 UEFI clients get (Debian has no arm64 iPXE)
# Usage: tests/liveos/build.sh [--arch amd64|arm64] [OUTDIR]
#   (default amd64 into tests/.cache/liveos; arm64 into tests/.cache/liveos-arm64)
# Runs as root on Debian 12. Needs apt (only Debian's mirrors), dpkg-deb and
# busybox-static. Downloaded .debs are kept in tests/.cache/debs; when VERSION
# already matches what would be built, it does nothing. arm64 packages come
# from Debian's arm64 archive through a private apt state under
# tests/.cache/apt-arm64 (package lists for arm64 only): the host's dpkg
# architectures and apt lists are never touched.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TESTS=$(dirname "$HERE")
ARCH=amd64
if [ "${1:-}" = "--arch" ]; then
    ARCH=${2:?--arch needs amd64 or arm64}
    shift 2
fi
case "$ARCH" in
    amd64) DEFAULT_OUT=$TESTS/.cache/liveos ;;
    arm64) DEFAULT_OUT=$TESTS/.cache/liveos-arm64 ;;
    *) echo "liveos: error: --arch must be amd64 or arm64" >&2; exit 1 ;;
esac
OUTDIR=${1:-$DEFAULT_OUT}
DEBDIR=$TESTS/.cache/debs
BUSYBOX=${BUSYBOX:-/bin/busybox}
KERNEL_META=linux-image-cloud-$ARCH
# Modules for a virtio-net NIC; their dependencies are added from depends=.
MODULES=(virtio_pci virtio_net)

log() { echo "liveos: $*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (the initramfs needs /dev/console)"
for t in apt-cache apt-get dpkg-deb gzip sha256sum flock; do
    command -v "$t" >/dev/null || die "$t not found"
done
[ -x "$BUSYBOX" ] || die "$BUSYBOX not found (apt-get install busybox-static)"
if ldd "$BUSYBOX" >/dev/null 2>&1; then
    die "$BUSYBOX is dynamically linked (apt-get install busybox-static)"
fi
HOST_BUSYBOX=$BUSYBOX

mkdir -p "$OUTDIR" "$DEBDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
# One build at a time (tests may call this in parallel); the .debs are shared.
exec 9>"$DEBDIR/.lock"
flock 9

# apt for the target architecture: the host's own for amd64; for arm64 a
# private state (lists, cache, status) that knows only arm64.
APT_OPTS=()
if [ "$ARCH" = arm64 ]; then
    APTDIR=$TESTS/.cache/apt-arm64
    mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial"
    : >>"$APTDIR/status"
    APT_OPTS=(
        -o APT::Architecture=arm64 -o APT::Architectures::=arm64
        -o Dir::State::Lists="$APTDIR/lists" -o Dir::State::status="$APTDIR/status"
        -o Dir::Cache="$APTDIR/cache" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
        -o Debug::NoLocking=1
    )
fi
apt_cache() { apt-cache "${APT_OPTS[@]}" "$@"; }
apt_get() { apt-get "${APT_OPTS[@]}" "$@"; }

# download PKG[=VER] DEST: one .deb, kept in DEBDIR.
download() {
    local dl got
    dl=$(mktemp -d "$DEBDIR/.dl.XXXXXX")
    (cd "$dl" && apt_get download -q -o APT::Sandbox::User=root "$1" >&2)
    got=("$dl"/*.deb)
    [ -s "${got[0]}" ] || die "apt-get download $1 gave no .deb"
    mv "${got[0]}" "$2"
    rmdir "$dl"
}

# --- Which kernel: the cloud metapackage's versioned dependency -------------
# One apt-cache call (this machine keeps no pkgcache.bin, so each costs ~0.7 s):
# the candidate metapackage depends on "linux-image-6.1.0-N-cloud-amd64 (= V)".
resolve_kernel() {
    apt_cache show --no-all-versions "$KERNEL_META" 2>/dev/null |
        awk '/^Depends:/ {
            sub(/^Depends:[ \t]*/, "")
            n = split($0, deps, /[ \t]*[,|][ \t]*/)
            for (i = 1; i <= n; i++) if (deps[i] ~ /^linux-image-[0-9]/) { print deps[i]; exit }
        }'
}
DEP=$(resolve_kernel || true)
if [ -z "$DEP" ]; then
    log "apt-cache does not know $KERNEL_META: apt-get update"
    apt_get update -q >&2
    DEP=$(resolve_kernel || true)
fi
[ -n "$DEP" ] || die "cannot resolve $KERNEL_META to a linux-image-* package"
KPKG=${DEP%% *}
case "$DEP" in
    *"(= "*")") KVER=${DEP##*(= } && KVER=${KVER%)} ;;
    *) KVER=$(apt_cache policy "$KPKG" | awk '$1 == "Candidate:" { print $2; exit }') ;;
esac
[ -n "$KVER" ] && [ "$KVER" != "(none)" ] || die "no candidate version of $KPKG"
KREL=${KPKG#linux-image-}

# arm64 also needs an arm64 busybox for the initramfs and the netboot GRUB.
if [ "$ARCH" = arm64 ]; then
    EXTRA_DEBS=()
    for pkg in busybox-static grub-efi-arm64-bin; do
        ver=$(apt_cache policy "$pkg" | awk '$1 == "Candidate:" { print $2; exit }')
        [ -n "$ver" ] && [ "$ver" != "(none)" ] || die "no arm64 candidate for $pkg"
        deb=$DEBDIR/${pkg}_${ver//:/%3a}_arm64.deb
        if [ ! -s "$deb" ]; then
            log "downloading $pkg:arm64=$ver"
            download "$pkg=$ver" "$deb"
        fi
        EXTRA_DEBS+=("$deb")
    done
    EXTRA_ROOT=$(mktemp -d)
    trap 'rm -rf "$EXTRA_ROOT"' EXIT
    for deb in "${EXTRA_DEBS[@]}"; do dpkg-deb -x "$deb" "$EXTRA_ROOT"; done
    BUSYBOX=$EXTRA_ROOT/bin/busybox
    GRUBNET=$EXTRA_ROOT/usr/lib/grub/arm64-efi/monolithic/grubnetaa64.efi
    [ -s "$BUSYBOX" ] || die "no bin/busybox in the arm64 busybox-static"
    [ -s "$GRUBNET" ] || die "no monolithic/grubnetaa64.efi in grub-efi-arm64-bin"
fi

INPUTS_SHA=$(cat "$HERE/build.sh" "$HERE/modules.sh" "$HERE/init" "$HERE/udhcpc.script" "$BUSYBOX" |
    sha256sum | cut -d' ' -f1)
VERSION_TEXT="arch=$ARCH
kernel-package=$KPKG
kernel-version=$KVER
kernel-release=$KREL
inputs-sha256=$INPUTS_SHA"

if [ -f "$OUTDIR/VERSION" ] && [ -s "$OUTDIR/vmlinuz" ] && [ -s "$OUTDIR/initrd.img" ] &&
    [ "$(cat "$OUTDIR/VERSION")" = "$VERSION_TEXT" ]; then
    log "up to date: $OUTDIR ($KPKG $KVER)"
    exit 0
fi

# --- The kernel package ------------------------------------------------------
DEB=$DEBDIR/${KPKG}_${KVER//:/%3a}_$ARCH.deb
if [ ! -s "$DEB" ]; then
    log "downloading $KPKG=$KVER"
    download "$KPKG=$KVER" "$DEB"
    # Older kernels of the same flavour are not needed any more.
    for old in "$DEBDIR"/linux-image-*-cloud-"$ARCH"_*.deb; do
        [ "$old" = "$DEB" ] || rm -f "$old"
    done
else
    log "using cached $(basename "$DEB")"
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK" "${EXTRA_ROOT:-}"' EXIT
PKGROOT=$WORK/pkg
ROOT=$WORK/root
dpkg-deb -x "$DEB" "$PKGROOT"
[ -f "$PKGROOT/boot/vmlinuz-$KREL" ] || die "no boot/vmlinuz-$KREL in $DEB"
MODSRC=$PKGROOT/lib/modules/$KREL
[ -d "$MODSRC" ] || die "no lib/modules/$KREL in $DEB"

# --- Modules: resolve dependencies, decompress, load order ------------------
# shellcheck source=modules.sh
source "$HERE/modules.sh"
index_modules "$MODSRC"

mkdir -p "$ROOT"/{bin,dev,etc,proc,sys,tmp,run,root,lib/modules/"$KREL"}
for m in "${MODULES[@]}"; do
    add_module "$MODSRC" "$ROOT" "$m"
done
printf '%s\n' "${ORDER[@]}" >"$ROOT/etc/liveos-modules"
log "modules (load order): $(printf '%s ' "${ORDER[@]##*/}")"
cp "$MODSRC"/modules.builtin* "$MODSRC/modules.order" "$ROOT/lib/modules/$KREL/" 2>/dev/null || true
"$HOST_BUSYBOX" depmod -b "$ROOT" "$KREL" || log "busybox depmod failed (insmod still works)"

# --- The rest of the initramfs -----------------------------------------------
cp "$BUSYBOX" "$ROOT/bin/busybox"
# The host's busybox lists the applets (an arm64 one cannot run here).
for applet in $("$HOST_BUSYBOX" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$ROOT/bin/$applet"
done
ln -s bin "$ROOT/sbin"
install -m 0755 "$HERE/init" "$ROOT/init"
install -m 0755 "$HERE/udhcpc.script" "$ROOT/udhcpc.script"
mknod -m 0600 "$ROOT/dev/console" c 5 1
mknod -m 0666 "$ROOT/dev/null" c 1 3
chmod 1777 "$ROOT/tmp"
echo "$VERSION_TEXT" >"$ROOT/etc/liveos-version"

# Sorted entries, fixed mtimes, no name/time in gzip (busybox cpio still
# records inode numbers, so two builds differ by a few bytes).
find "$ROOT" -exec touch -h -d @0 {} +
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | "$HOST_BUSYBOX" cpio -o -H newc 2>/dev/null) |
    gzip -n -9 >"$WORK/initrd.img"

# --- Install ----------------------------------------------------------------
rm -f "$OUTDIR/VERSION"
install -m 0644 "$PKGROOT/boot/vmlinuz-$KREL" "$OUTDIR/vmlinuz.tmp"
install -m 0644 "$WORK/initrd.img" "$OUTDIR/initrd.img.tmp"
mv -f "$OUTDIR/vmlinuz.tmp" "$OUTDIR/vmlinuz"
mv -f "$OUTDIR/initrd.img.tmp" "$OUTDIR/initrd.img"
if [ "$ARCH" = arm64 ]; then
    install -m 0644 "$GRUBNET" "$OUTDIR/grubnetaa64.efi"
fi
echo "$VERSION_TEXT" >"$OUTDIR/VERSION.tmp"
mv -f "$OUTDIR/VERSION.tmp" "$OUTDIR/VERSION"
log "built $OUTDIR: vmlinuz $(stat -c %s "$OUTDIR/vmlinuz") bytes," \
    "initrd.img $(stat -c %s "$OUTDIR/initrd.img") bytes ($KPKG $KVER)"
