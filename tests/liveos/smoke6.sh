#!/usr/bin/env bash
# IPv6-only smoke test of the live OS by itself, without ironboot: builds it,
# then boots it three times (five with NBD_ROOT_BIN) with QEMU -kernel/-initrd
# (TCG) in a network namespace of its own (ib6live-PID) whose bridge br0 has
# fd00:77::1/64 and fe80::1/64 and no IPv4 address at all; ebtables in the
# namespace drops (and counts) every IPv4 and ARP frame, so the guest's IPv4
# silence is checked too.
#   1. slaac: dnsmasq sends router advertisements for fd00:77::/64 (A, L and
#      M flags, as ironboot's do); the seed URL is an IPv6 literal
#      (ds=nocloud-net;s=http://[fd00:77::1]:8080/config/TOKEN/), which alone
#      selects the IPv6 path: expects a SLAAC address, the seed over IPv6 and
#      the phone_home POST (with ip6=) at the Python server; reports the time
#      from QEMU's start to the POST.
#   2. link-local: ironboot.net=ipv6 and no router advertisement at all; the
#      seed URL is link-local (http://[fe80::1%25eth0]:8080/…): expects the
#      20 s wait to end with "no global IPv6 address", the init to go on with
#      eth0's link-local address and the phone_home POST to arrive.
#   3. no-ra: no router advertisement, a global seed URL: expects the wait
#      to end with "ipv6 autoconf failed" and "done" (no seed fetch).
#   4. only with NBD_ROOT_BIN=…/ironboot-nbd-root (needs nbdkit, veritysetup,
#      mksquashfs): the two-stage live OS (nbdroot.sh, an 8 MiB root, into
#      NBD_OUT, default tests/.cache/liveos-nbd-smoke6) with
#      ironboot.nbd=[fd00:77::1]:10809 served by nbdkit: expects the verified
#      switch to stage 2 and the phone_home POST with root=nbd and ip6=;
#      then with a wrong root hash: expects the boot-failure report
#      (POST /boot-failure/TOKEN) over IPv6.
# Needs root, qemu-system-x86, dnsmasq-base, python3, ebtables (optional).
# Usage: [NBD_ROOT_BIN=target/release/ironboot-nbd-root] smoke6.sh [OUTDIR]
# (about 65 s; 90 s with the NBD cases).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${1:-$HERE/../.cache/liveos}
"$HERE/build.sh" "$OUT"

NS=ib6live-$$
TMP=$(mktemp -d)
PIDS=()
stop() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
cleanup() {
    stop
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" link add br0 type bridge stp_state 0 forward_delay 0
EBTABLES=
if command -v ebtables >/dev/null; then
    EBTABLES=1
    for chain in FORWARD INPUT OUTPUT; do
        for proto in IPv4 ARP; do
            ip netns exec "$NS" ebtables -A "$chain" -p "$proto" -j DROP
        done
    done
fi
ip netns exec "$NS" sh -c 'echo 0 >/proc/sys/net/ipv6/conf/br0/accept_dad'
ip -n "$NS" addr add fd00:77::1/64 dev br0 nodad
ip -n "$NS" addr add fe80::1/64 dev br0 nodad
ip -n "$NS" link set br0 up
ip -n "$NS" tuntap add dev tap0 mode tap
ip -n "$NS" link set tap0 master br0 up

# The seed server: GET from a directory, POST recorded (with its arrival
# time and Host header) and answered 200.
cat >"$TMP/seed6.py" <<'EOF'
import functools, http.server, socket, sys, time
host, port, root = sys.argv[1], int(sys.argv[2]), sys.argv[3]
class H(http.server.SimpleHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        print("POST", "%.3f" % time.time(), self.client_address[0], self.path,
              self.headers.get("Host"), self.headers.get("Content-Type"), body.decode(), flush=True)
        out = b"thanks\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
addr = socket.getaddrinfo(host, port, socket.AF_INET6, socket.SOCK_STREAM)[0][4]
S(addr, functools.partial(H, directory=root)).serve_forever()
EOF

fail=0
check() { # FILE REGEX
    if grep -qE "$2" "$1"; then echo "  ok: $2"; else echo "  MISSING in $(basename "$1"): $2"; fail=1; fi
}

TOKEN=tok6
# boot NAME RA(yes|no) BIND-ADDR SEED-BASE EXTRA-APPEND
boot() {
    local name=$1 seed=$TMP/$1/config/$TOKEN
    mkdir -p "$seed"
    printf 'instance-id: iid-v6\nlocal-hostname: node6\n' >"$seed/meta-data"
    printf '#cloud-config\nphone_home:\n  url: %s/phone/$INSTANCE_ID\n  post: all\n  tries: 10\n' \
        "$4" >"$seed/user-data"
    if [ "$2" = yes ]; then
        ip netns exec "$NS" timeout 150 dnsmasq --no-daemon --conf-file=/dev/null --port=0 \
            --interface=br0 --bind-interfaces --enable-ra \
            --dhcp-range=fd00:77::1000,fd00:77::1fff,slaac,64,1h \
            --dhcp-leasefile="$TMP/$name.leases" --pid-file= --user=root \
            >"$TMP/$name.dnsmasq" 2>&1 &
        PIDS+=($!)
    fi
    ip netns exec "$NS" timeout 150 python3 -u "$TMP/seed6.py" "$3" 8080 "$TMP/$name" \
        >"$TMP/$name.http" 2>&1 &
    PIDS+=($!)
    sleep 1
    local t0 t1
    t0=$(date +%s.%N)
    ip netns exec "$NS" timeout 120 qemu-system-x86_64 -machine pc,accel=tcg -m 256 \
        -display none -no-reboot -kernel "$OUT/vmlinuz" -initrd "$OUT/initrd.img" \
        -append "console=ttyS0 ds=nocloud-net;s=$4/config/$TOKEN/ $5 quiet" \
        -netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
        -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56 \
        -serial "file:$TMP/$name.log" </dev/null || true
    t1=$(date +%s.%N)
    stop
    cat "$TMP/$name.log"
    local post
    post=$(awk '$1 == "POST" { print $2; exit }' "$TMP/$name.http")
    if [ -n "$post" ]; then
        echo "$name: first POST $(awk -v a="$t0" -v b="$post" 'BEGIN { printf "%.1f", b - a }') s" \
            "after QEMU started; VM ended after $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"
    else
        echo "$name: no POST; VM ended after $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"
    fi
    echo "--- $name server log"
    cat "$TMP/$name.http"
}

L='^IRONBOOT-LIVEOS: '
boot slaac yes fd00:77::1 'http://[fd00:77::1]:8080' ''
check "$TMP/slaac.log" "${L}network ipv6 \(seed URL host \[fd00:77::1\]\)"
check "$TMP/slaac.log" "${L}eth0 address fd00:77::5054:ff:fe12:3456/64 \(slaac after"
check "$TMP/slaac.log" "${L}seed http://\[fd00:77::1\]:8080/config/$TOKEN/"
check "$TMP/slaac.log" "${L}END user-data"
check "$TMP/slaac.log" "${L}phone_home ok"
check "$TMP/slaac.log" "${L}done"
check "$TMP/slaac.http" "\"GET /config/$TOKEN/meta-data HTTP/1.1\" 200"
check "$TMP/slaac.http" '^POST [0-9.]+ fd00:77::5054:ff:fe12:3456 /phone/iid-v6 \[fd00:77::1\]:8080 application/x-www-form-urlencoded instance_id=iid-v6&hostname=node6&fqdn=node6&pub_key_rsa=&pub_key_ecdsa=&pub_key_ed25519=&secureboot=0&ip6=fd00%3A77%3A%3A5054%3Aff%3Afe12%3A3456$'

boot link-local no fe80::1%br0 'http://[fe80::1%25eth0]:8080' 'ironboot.net=ipv6'
check "$TMP/link-local.log" "${L}network ipv6 \(ironboot.net=ipv6\)"
check "$TMP/link-local.log" "${L}no global IPv6 address on eth0 after 20 s"
check "$TMP/link-local.log" "${L}eth0 address fe80::5054:ff:fe12:3456/64 \(link-local\)"
check "$TMP/link-local.log" "${L}phone_home ok"
check "$TMP/link-local.log" "${L}done"
check "$TMP/link-local.http" '^POST [0-9.]+ fe80::5054:ff:fe12:3456(%br0)? /phone/iid-v6 .*&ip6=fe80%3A%3A5054%3Aff%3Afe12%3A3456$'

boot no-ra no fd00:77::1 'http://[fd00:77::1]:8080' ''
check "$TMP/no-ra.log" "${L}no global IPv6 address on eth0 after 20 s \(no router advertisement"
check "$TMP/no-ra.log" "${L}ipv6 autoconf failed"
check "$TMP/no-ra.log" "${L}done"
if grep -qE "${L}(seed|phone_home)|udhcpc" "$TMP/no-ra.log"; then
    echo "  UNEXPECTED in no-ra.log: seed, phone_home or udhcpc"; fail=1
else
    echo "  ok: no seed fetch, no phone_home, no udhcpc"
fi

# 4. Optional, with NBD_ROOT_BIN=…/ironboot-nbd-root: the two-stage live OS
# (nbdroot.sh, a small root) with ironboot.nbd=[fd00:77::1]:10809 served by
# nbdkit (the root image and a dm-verity tree made here), over SLAAC.
NBD_CASES=0
if [ -n "${NBD_ROOT_BIN:-}" ]; then
    NBD_CASES=2
    NBD_OUT=${NBD_OUT:-$HERE/../.cache/liveos-nbd-smoke6}
    NBD_ROOT_BIN=$NBD_ROOT_BIN SIZE_MIB=8 LIVEOS_DIR=$OUT "$HERE/nbdroot.sh" "$NBD_OUT"
    mkdir -p "$TMP/exports"
    cp "$NBD_OUT/root.squashfs" "$TMP/exports/root"
    : >"$TMP/exports/tree"
    ROOTHASH=$(veritysetup format "$TMP/exports/root" "$TMP/exports/tree" |
        awk '/^Root hash:/ { print $3 }')
    # One nbdkit per boot (boot() stops every process when the VM ends). -k:
    # nbdkit may ignore the TERM while a powered-off guest's connection is
    # still open; timeout then kills it 2 s later.
    nbdkit_start() {
        ip netns exec "$NS" timeout -k 2 150 nbdkit --foreground -i fd00:77::1 -p 10809 \
            file dir="$TMP/exports" >>"$TMP/nbdkit.log" 2>&1 &
        PIDS+=($!)
    }
    nbdkit_start
    OUT_SAVED=$OUT
    # boot() boots $OUT/vmlinuz and $OUT/initrd.img.
    mkdir -p "$TMP/nbdboot"
    ln -s "$NBD_OUT/vmlinuz" "$TMP/nbdboot/vmlinuz"
    ln -s "$NBD_OUT/initrd-nbd.img" "$TMP/nbdboot/initrd.img"
    OUT=$TMP/nbdboot
    boot nbd yes fd00:77::1 'http://[fd00:77::1]:8080' \
        "ironboot.nbd=[fd00:77::1]:10809 ironboot.root=root ironboot.verity=tree:$ROOTHASH"
    # A wrong root hash: stage 1 reports the failure to the seed server
    # (POST /boot-failure/TOKEN over IPv6) and reboots (-no-reboot ends QEMU).
    BADHASH=$(printf '%064d' 0)
    nbdkit_start
    boot nbd-bad yes fd00:77::1 'http://[fd00:77::1]:8080' \
        "ironboot.nbd=[fd00:77::1]:10809 ironboot.root=root ironboot.verity=tree:$BADHASH"
    OUT=$OUT_SAVED
    check "$TMP/nbd-bad.log" "${L}root failed: (root|verity)"
    check "$TMP/nbd-bad.log" "${L}root failure detail: .*(veritysetup|verity)"
    check "$TMP/nbd-bad.log" "${L}boot failure reported to http://\[fd00:77::1\]:8080/boot-failure/$TOKEN"
    check "$TMP/nbd-bad.http" "^POST [0-9.]+ fd00:77::5054:ff:fe12:3456 /boot-failure/$TOKEN .*reason=(root|verity)&detail="
    check "$TMP/nbd.log" "${L}network ipv6 \(seed URL host \[fd00:77::1\]\)"
    check "$TMP/nbd.log" "${L}nbd root root from \[fd00:77::1\]:10809"
    check "$TMP/nbd.log" "${L}switching root \(verified\)"
    check "$TMP/nbd.log" "${L}stage 2 on nbd root \(verity verified\)"
    check "$TMP/nbd.log" "${L}eth0 address fd00:77::5054:ff:fe12:3456/64 \(from stage 1\)"
    check "$TMP/nbd.log" "${L}phone_home ok"
    check "$TMP/nbd.http" '^POST [0-9.]+ fd00:77::5054:ff:fe12:3456 /phone/iid-v6 .*&root=nbd&ip6=fd00%3A77%3A%3A5054%3Aff%3Afe12%3A3456$'
fi

if [ -n "$EBTABLES" ]; then
    # Every IPv4/ARP frame the guests sent hit a DROP rule and its counter.
    v4=$(ip netns exec "$NS" ebtables -L --Lc | awk '/-p (IPv4|ARP)/ { for (i = 1; i < NF; i++) if ($i == "pcnt") n += $(i + 2) } END { print n + 0 }')
    if [ "$v4" = 0 ]; then echo "  ok: no IPv4 or ARP frame on br0"; else
        echo "  IPv4/ARP frames on br0: $v4"; ip netns exec "$NS" ebtables -L --Lc; fail=1; fi
fi

if [ "$fail" = 0 ]; then echo "liveos smoke6: $((3 + NBD_CASES)) passed, 0 failed"; else echo "liveos smoke6: FAILED"; fi
exit "$fail"
