#!/usr/bin/env bash
# Build the small live OS that the end-to-end tests network-boot in QEMU:
#   OUTDIR/vmlinuz     Debian's cloud kernel (virtio drivers, LZ4: fast under TCG)
#   OUTDIR/initrd.img  static busybox, the virtio-net modules, tests/liveos/init
#   OUTDIR/VERSION     kernel package and version + sha256 of the inputs
# Usage: tests/liveos/build.sh [OUTDIR]     (default tests/.cache/liveos)
# Runs as root on Debian 12. Needs apt (only Debian's mirrors), dpkg-deb and
# busybox-static. Downloaded .debs are kept in tests/.cache/debs; when VERSION
# already matches what would be built, it does nothing.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TESTS=$(dirname "$HERE")
OUTDIR=${1:-$TESTS/.cache/liveos}
DEBDIR=$TESTS/.cache/debs
BUSYBOX=${BUSYBOX:-/bin/busybox}
KERNEL_META=linux-image-cloud-amd64
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

mkdir -p "$OUTDIR" "$DEBDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
# One build at a time (tests may call this in parallel); the .debs are shared.
exec 9>"$DEBDIR/.lock"
flock 9

# --- Which kernel: the cloud metapackage's versioned dependency -------------
# One apt-cache call (this machine keeps no pkgcache.bin, so each costs ~0.7 s):
# the candidate metapackage depends on "linux-image-6.1.0-N-cloud-amd64 (= V)".
resolve_kernel() {
    apt-cache show --no-all-versions "$KERNEL_META" 2>/dev/null |
        awk '/^Depends:/ {
            sub(/^Depends:[ \t]*/, "")
            n = split($0, deps, /[ \t]*[,|][ \t]*/)
            for (i = 1; i <= n; i++) if (deps[i] ~ /^linux-image-[0-9]/) { print deps[i]; exit }
        }'
}
DEP=$(resolve_kernel)
if [ -z "$DEP" ]; then
    log "apt-cache does not know $KERNEL_META: apt-get update"
    apt-get update -q >&2
    DEP=$(resolve_kernel)
fi
[ -n "$DEP" ] || die "cannot resolve $KERNEL_META to a linux-image-* package"
KPKG=${DEP%% *}
case "$DEP" in
    *"(= "*")") KVER=${DEP##*(= } && KVER=${KVER%)} ;;
    *) KVER=$(apt-cache policy "$KPKG" | awk '$1 == "Candidate:" { print $2; exit }') ;;
esac
[ -n "$KVER" ] && [ "$KVER" != "(none)" ] || die "no candidate version of $KPKG"
KREL=${KPKG#linux-image-}

INPUTS_SHA=$(cat "$HERE/build.sh" "$HERE/init" "$HERE/udhcpc.script" "$BUSYBOX" |
    sha256sum | cut -d' ' -f1)
VERSION_TEXT="kernel-package=$KPKG
kernel-version=$KVER
kernel-release=$KREL
inputs-sha256=$INPUTS_SHA"

if [ -f "$OUTDIR/VERSION" ] && [ -s "$OUTDIR/vmlinuz" ] && [ -s "$OUTDIR/initrd.img" ] &&
    [ "$(cat "$OUTDIR/VERSION")" = "$VERSION_TEXT" ]; then
    log "up to date: $OUTDIR ($KPKG $KVER)"
    exit 0
fi

# --- The kernel package ------------------------------------------------------
DEB=$DEBDIR/${KPKG}_${KVER//:/%3a}_amd64.deb
if [ ! -s "$DEB" ]; then
    log "downloading $KPKG=$KVER"
    dl=$(mktemp -d "$DEBDIR/.dl.XXXXXX")
    (cd "$dl" && apt-get download -q -o APT::Sandbox::User=root "$KPKG=$KVER" >&2)
    got=("$dl"/*.deb)
    [ -s "${got[0]}" ] || die "apt-get download $KPKG=$KVER gave no .deb"
    mv "${got[0]}" "$DEB"
    rmdir "$dl"
    # Older kernels of the same flavour are not needed any more.
    for old in "$DEBDIR"/linux-image-*-cloud-amd64_*.deb; do
        [ "$old" = "$DEB" ] || rm -f "$old"
    done
else
    log "using cached $(basename "$DEB")"
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PKGROOT=$WORK/pkg
ROOT=$WORK/root
dpkg-deb -x "$DEB" "$PKGROOT"
[ -f "$PKGROOT/boot/vmlinuz-$KREL" ] || die "no boot/vmlinuz-$KREL in $DEB"
MODSRC=$PKGROOT/lib/modules/$KREL
[ -d "$MODSRC" ] || die "no lib/modules/$KREL in $DEB"

# --- Modules: resolve dependencies, decompress, load order ------------------
declare -A MODPATH=() BUILTIN=() SEEN=()
ORDER=()
while IFS= read -r f; do
    n=${f##*/}
    n=${n%%.ko*}
    MODPATH[${n//-/_}]=$f
done < <(cd "$MODSRC" && find kernel -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')
if [ -f "$MODSRC/modules.builtin" ]; then
    while IFS= read -r f; do
        n=${f##*/}
        n=${n%%.ko*}
        BUILTIN[${n//-/_}]=1
    done <"$MODSRC/modules.builtin"
fi

decompress() { # SRC DST
    case "$1" in
        *.ko) cp "$1" "$2" ;;
        *.ko.xz) xz -dc "$1" >"$2" ;;
        *.ko.zst) zstd -q -dc "$1" >"$2" ;;
        *.ko.gz) gzip -dc "$1" >"$2" ;;
    esac
}

modinfo_field() { # FIELD KOFILE (uncompressed)
    tr '\0' '\n' <"$2" | sed -n "s/^$1=//p" | head -n 1
}

add_module() { # NAME: its dependencies first, then itself
    local name=${1//-/_} rel dst dep deps
    [ -z "${SEEN[$name]:-}" ] || return 0
    SEEN[$name]=1
    if [ -n "${BUILTIN[$name]:-}" ]; then
        log "module $name is built in"
        return 0
    fi
    rel=${MODPATH[$name]:-}
    [ -n "$rel" ] || die "module $name not found in $KPKG"
    dst=$ROOT/lib/modules/$KREL/${rel%%.ko*}.ko
    mkdir -p "$(dirname "$dst")"
    decompress "$MODSRC/$rel" "$dst"
    case "$(modinfo_field vermagic "$dst")" in
        "$KREL "*) ;;
        *) die "$rel: vermagic is not $KREL" ;;
    esac
    deps=$(modinfo_field depends "$dst")
    for dep in ${deps//,/ }; do
        add_module "$dep"
    done
    ORDER+=("/lib/modules/$KREL/${rel%%.ko*}.ko")
}

mkdir -p "$ROOT"/{bin,dev,etc,proc,sys,tmp,run,root,lib/modules/"$KREL"}
for m in "${MODULES[@]}"; do
    add_module "$m"
done
printf '%s\n' "${ORDER[@]}" >"$ROOT/etc/liveos-modules"
log "modules (load order): $(printf '%s ' "${ORDER[@]##*/}")"
cp "$MODSRC"/modules.builtin* "$MODSRC/modules.order" "$ROOT/lib/modules/$KREL/" 2>/dev/null || true
"$BUSYBOX" depmod -b "$ROOT" "$KREL" || log "busybox depmod failed (insmod still works)"

# --- The rest of the initramfs -----------------------------------------------
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$BUSYBOX" --list); do
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
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc 2>/dev/null) |
    gzip -n -9 >"$WORK/initrd.img"

# --- Install ----------------------------------------------------------------
rm -f "$OUTDIR/VERSION"
install -m 0644 "$PKGROOT/boot/vmlinuz-$KREL" "$OUTDIR/vmlinuz.tmp"
install -m 0644 "$WORK/initrd.img" "$OUTDIR/initrd.img.tmp"
mv -f "$OUTDIR/vmlinuz.tmp" "$OUTDIR/vmlinuz"
mv -f "$OUTDIR/initrd.img.tmp" "$OUTDIR/initrd.img"
echo "$VERSION_TEXT" >"$OUTDIR/VERSION.tmp"
mv -f "$OUTDIR/VERSION.tmp" "$OUTDIR/VERSION"
log "built $OUTDIR: vmlinuz $(stat -c %s "$OUTDIR/vmlinuz") bytes," \
    "initrd.img $(stat -c %s "$OUTDIR/initrd.img") bytes ($KPKG $KVER)"
