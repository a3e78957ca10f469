#!/usr/bin/env bash
# Smoke test of the live OS by itself, without ironboot: builds it, then boots
# it twice with QEMU -kernel/-initrd (TCG) in a network namespace of its own
# against dnsmasq (DHCP only) and a Python HTTP seed server:
#   1. flow-style phone_home, Python's stock http.server (POST answered 501):
#      expects the POST in the server log and "phone_home failed" after 3 tries;
#   2. block-style phone_home, a server that accepts the POST: expects
#      "phone_home ok" and the form body in the server log.
# Needs root, qemu-system-x86, dnsmasq-base, python3. Usage: smoke.sh [OUTDIR]
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${1:-$HERE/../.cache/liveos}
"$HERE/build.sh" "$OUT"

NS=liveos-smoke-$$
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
ip -n "$NS" addr add 10.88.0.1/24 dev br0
ip -n "$NS" link set br0 up
ip -n "$NS" tuntap add dev tap0 mode tap
ip -n "$NS" link set tap0 master br0 up

cat >"$TMP/accept.py" <<'EOF'
import functools, http.server, sys
class H(http.server.SimpleHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        print("POST", self.path, self.headers.get("Content-Type"), body.decode(), flush=True)
        out = b"thanks\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
http.server.ThreadingHTTPServer(("10.88.0.1", 8000),
    functools.partial(H, directory=sys.argv[1])).serve_forever()
EOF

fail=0
check() { # FILE REGEX
    if grep -qE "$2" "$1"; then echo "  ok: $2"; else echo "  MISSING in $(basename "$1"): $2"; fail=1; fi
}

boot() { # NAME SERVER(stock|accept) USER-DATA
    local name=$1 seed=$TMP/$1
    mkdir -p "$seed"
    printf 'instance-id: iid-test\nlocal-hostname: node7\n' >"$seed/meta-data"
    printf '%s\n' "$3" >"$seed/user-data"
    ip netns exec "$NS" timeout 120 dnsmasq --no-daemon --conf-file=/dev/null --port=0 \
        --dhcp-range=10.88.0.100,10.88.0.150,1h --interface=br0 --bind-interfaces \
        --dhcp-leasefile="$TMP/$name.leases" --pid-file= --user=root --no-ping \
        >"$TMP/$name.dnsmasq" 2>&1 &
    PIDS+=($!)
    if [ "$2" = stock ]; then
        ip netns exec "$NS" timeout 120 python3 -u -m http.server 8000 --bind 10.88.0.1 \
            --directory "$seed" >"$TMP/$name.http" 2>&1 &
    else
        ip netns exec "$NS" timeout 120 python3 -u "$TMP/accept.py" "$seed" >"$TMP/$name.http" 2>&1 &
    fi
    PIDS+=($!)
    sleep 1
    local t0=$SECONDS
    ip netns exec "$NS" timeout 90 qemu-system-x86_64 -machine pc,accel=tcg -m 256 \
        -display none -no-reboot -kernel "$OUT/vmlinuz" -initrd "$OUT/initrd.img" \
        -append "console=ttyS0 ds=nocloud-net;s=http://10.88.0.1:8000/ quiet" \
        -netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
        -device virtio-net-pci,netdev=n0 -serial "file:$TMP/$name.log" </dev/null || true
    echo "$name: VM ended after $((SECONDS - t0)) s"
    stop
    cat "$TMP/$name.log"
}

boot flow stock '#cloud-config
phone_home: {url: "http://10.88.0.1:8000/phone/$INSTANCE_ID", post: all, tries: 3}'
check "$TMP/flow.log" '^IRONBOOT-LIVEOS: init started'
check "$TMP/flow.log" '^IRONBOOT-LIVEOS: END user-data'
check "$TMP/flow.log" '^IRONBOOT-LIVEOS: phone_home failed'
check "$TMP/flow.log" '^IRONBOOT-LIVEOS: done'
check "$TMP/flow.http" '"POST /phone/iid-test HTTP/1.1" 501'

boot block accept '#cloud-config
phone_home:
  url: http://10.88.0.1:8000/phone/${INSTANCE_ID}
  post: all
  tries: 10'
check "$TMP/block.log" '^IRONBOOT-LIVEOS: phone_home ok'
check "$TMP/block.log" '^IRONBOOT-LIVEOS: done'
check "$TMP/block.http" '^POST /phone/iid-test application/x-www-form-urlencoded instance_id=iid-test&hostname=node7&fqdn=node7&pub_key_rsa=&pub_key_ecdsa=&pub_key_ed25519=&secureboot=0$'

if [ "$fail" = 0 ]; then echo "liveos smoke: 2 passed, 0 failed"; else echo "liveos smoke: FAILED"; fi
exit "$fail"
