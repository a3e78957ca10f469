#!/usr/bin/env bash
# Boot storm: N simulated machines (default 1,000), ironboot against
# dnsmasq (DHCP + TFTP) + nginx (scripts, artifacts) on the subset both can
# serve, and ironboot's full flow (config + confirmation) alone. Runs
# alternate in one invocation; medians of $RUNS.
source "$(dirname "$0")/lib.sh"
need dnsmasq nginx curl jq "$IRONBOOT" "$STORM"
N="${N:-1000}"
KERNEL_MB="${KERNEL_MB:-4}"
INITRD_MB="${INITRD_MB:-16}"
setup_ns
make_file "$WORK/vmlinuz" $((KERNEL_MB << 20))
make_file "$WORK/initrd.img" $((INITRD_MB << 20))
K=$(sha256sum "$WORK/vmlinuz" | cut -d' ' -f1)
I=$(sha256sum "$WORK/initrd.img" | cut -d' ' -f1)
STORM_ARGS=(--dhcp 127.0.0.1:67 --giaddr 127.77.0.1 --relay-port 67 -n "$N"
    --dhcp-timeouts 4,8,16,32 --http-retry-delay 5 --deadline 600 --json)

# The dnsmasq + nginx stack, serving the same files the same way.
peer_setup() {
    local d=$WORK/peer
    mkdir -p "$d/tftp" "$d/www/artifacts/sha256" "$d/www/boot"
    cp /usr/lib/ipxe/undionly.kpxe "$d/tftp/"
    cp "$WORK/vmlinuz" "$d/www/artifacts/sha256/$K"
    cp "$WORK/initrd.img" "$d/www/artifacts/sha256/$I"
    cat >"$d/www/boot.ipxe" <<IPXE
#!ipxe
chain --autofree http://127.0.0.1:8080/boot/\${mac:hexhyp}.ipxe?uuid=\${uuid}
IPXE
    cat >"$d/www/machine.ipxe" <<IPXE
#!ipxe
kernel --name vmlinuz http://127.0.0.1:8080/artifacts/sha256/$K console=ttyS0 initrd=initrd0
initrd --name initrd0 http://127.0.0.1:8080/artifacts/sha256/$I
boot
IPXE
    cat >"$d/dnsmasq.conf" <<CONF
port=0
bind-interfaces
no-resolv
no-hosts
no-ping
quiet-dhcp
quiet-tftp
dhcp-range=127.77.1.1,127.77.250.254,255.255.0.0,1h
dhcp-lease-max=1000000
dhcp-leasefile=$d/dnsmasq.leases
dhcp-userclass=set:ipxe,iPXE
dhcp-boot=tag:!ipxe,undionly.kpxe,,127.0.0.1
dhcp-boot=tag:ipxe,http://127.0.0.1:8080/boot.ipxe
enable-tftp
tftp-root=$d/tftp
tftp-max=4096
CONF
    cat >"$d/nginx.conf" <<CONF
worker_processes auto;
pid $d/nginx.pid;
error_log $d/nginx.err warn;
events { worker_connections 8192; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 10000;
    server {
        listen 127.0.0.1:8080 backlog=4096;
        root $d/www;
        location /boot/ { default_type text/plain; try_files /machine.ipxe =404; }
        location = /boot.ipxe { default_type text/plain; }
    }
}
CONF
}

run_peer() {
    local d=$WORK/peer
    rm -f "$d/dnsmasq.leases"
    start dnsmasq dnsmasq -k -u root --log-facility="$WORK/dnsmasq.syslog" -C "$d/dnsmasq.conf"; local dns=$LAST_PID
    start nginx nginx -c "$d/nginx.conf" -g 'daemon off;'; local ngx=$LAST_PID
    wait_tcp 8080; wait_udp 67
    in_ns "$STORM" "${STORM_ARGS[@]}" --subset --server-pid "$dns" >"$WORK/out.json" || true
    stop "$ngx"; stop "$dns"
}

run_ironboot() { # $1: extra storm flags
    local d=$WORK/ib
    rm -rf "$d"
    start_ironboot "$d" "max_transfers = 4096"
    cp /usr/lib/ipxe/undionly.kpxe "$d/tftp/"
    import_image "$d" "$WORK/vmlinuz" "$WORK/initrd.img"
    in_ns "$STORM" "${STORM_ARGS[@]}" $1 --server-pid "$IRONBOOT_PID" >"$WORK/out.json" || true
    stop "$IRONBOOT_PID"
}

field() { jq -r "$1" "$WORK/out.json"; }

peer_setup
echo "# storm: $N machines, kernel ${KERNEL_MB} MiB + initrd ${INITRD_MB} MiB; $(machine)"
declare -a IB_SUB=() PEER_SUB=() IB_FULL=()
for r in $(seq "$RUNS"); do
    run_ironboot --subset
    echo "run $r ironboot subset: $(field '"\(.completed)/\(.machines) ok, failed \(.failed), last boot \(.time_to_last_boot_s) s, server cpu \(.server.cpu_s) s, peak RSS \(.server.run_peak_rss_mb) MB"')"
    cp "$WORK/out.json" "$WORK/ib-sub-$r.json"
    IB_SUB+=("$(field '.time_to_last_boot_s // 9999')")
    run_peer
    echo "run $r dnsmasq+nginx subset: $(field '"\(.completed)/\(.machines) ok, failed \(.failed), last boot \(.time_to_last_boot_s) s, dnsmasq cpu \(.server.cpu_s) s"')"
    cp "$WORK/out.json" "$WORK/peer-sub-$r.json"
    PEER_SUB+=("$(field '.time_to_last_boot_s // 9999')")
    run_ironboot ""
    echo "run $r ironboot full: $(field '"\(.completed)/\(.machines) ok, failed \(.failed), last boot \(.time_to_last_boot_s) s, server cpu \(.server.cpu_s) s, peak RSS \(.server.run_peak_rss_mb) MB"')"
    cp "$WORK/out.json" "$WORK/ib-full-$r.json"
    IB_FULL+=("$(field '.time_to_last_boot_s // 9999')")
done
a=$(median "${IB_SUB[@]}"); b=$(median "${PEER_SUB[@]}"); c=$(median "${IB_FULL[@]}")
echo "RESULT storm subset: ironboot ${a} s, dnsmasq+nginx ${b} s (time to last boot, median of $RUNS); peer/ironboot = $(ratio "$b" "$a")x"
echo "RESULT storm full flow: ironboot ${c} s (median of $RUNS)"
echo "last full-flow report:"; jq -r '.steps[] | "  \(.step) p50 \(.p50_ms|floor) ms p99 \(.p99_ms|floor) ms"' "$WORK/ib-full-$RUNS.json"
mkdir -p "$BENCH_DIR/notes/last"; cp "$WORK"/*.json "$BENCH_DIR/notes/last/" 2>/dev/null || true
