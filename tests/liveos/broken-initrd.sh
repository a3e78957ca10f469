#!/bin/sh
# tests/liveos/broken-initrd.sh OUT [BUSYBOX]: writes OUT, an extra initrd
# (newc) holding only an /init that gives up before the network, printing
# IRONBOOT-BROKEN. Appended to the live OS's initrd it makes a generation
# that never phones home; with `panic=1` on its command line the kernel
# then reboots the machine. The rollout tests' broken generation.
set -eu
out=$1
bb=${2:-/bin/busybox}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
cat > "$root/init" <<'INIT'
#!/bin/sh
# The broken generation's /init (an extra initrd replaces the live OS's):
# it never reaches the network, so the machine never phones home.
/bin/busybox mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
echo "IRONBOOT-BROKEN: init gives up before the network"
exit 1
INIT
chmod 0755 "$root/init"
(cd "$root" && "$bb" find . | "$bb" cpio -o -H newc) > "$out"
