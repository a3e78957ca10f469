#!/usr/bin/env bash
# HTTP: wrk, 50 connections, a 100 MiB artifact from ironboot and from nginx
# (sendfile on) at the same content-addressed path; then ironboot's rendered
# per-machine scripts per second (each opens a boot in the ledger).
# Medians of $RUNS, servers alternating.
source "$(dirname "$0")/lib.sh"
need wrk nginx curl "$IRONBOOT"
DURATION="${DURATION:-10}"
# wrk asks for one machine's script from 127.0.0.1, an address no lease
# binds to it: with the binding rule on, every request would get the short
# "not bound" answer. Binding off measures rendering and opening a boot.
export IRONBOOT_EXTRA='[boot]
binding = "off"'

setup_ns
make_file "$WORK/vmlinuz" $((100 << 20))
make_file "$WORK/initrd.img" $((1 << 20))
K=$(sha256sum "$WORK/vmlinuz" | cut -d' ' -f1)
mkdir -p "$WORK/www/artifacts/sha256"; cp "$WORK/vmlinuz" "$WORK/www/artifacts/sha256/$K"
cat >"$WORK/nginx.conf" <<CONF
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err warn;
events { worker_connections 4096; }
http { access_log off; sendfile on; tcp_nopush on;
  server { listen 127.0.0.1:8080; root $WORK/www; } }
CONF

# wrk_gbs URL: transfer rate in MiB/s (wrk prints e.g. "Transfer/sec: 1.95GB").
wrk_rate() {
    in_ns wrk -t2 -c50 -d"${DURATION}s" "$1" | tee -a "$WORK/wrk.log" | awk '
      /^Transfer\/sec:/ { v=$2; u=v; gsub(/[0-9.]/,"",u); gsub(/[A-Za-z]/,"",v);
        m = (u=="GB") ? 1024 : (u=="MB") ? 1 : (u=="KB") ? 1/1024 : 1/1048576; t=v*m }
      /^Requests\/sec:/ { r=$2 }
      END { printf "%.1f %.1f\n", t, r }'
}

echo "# http: wrk -t2 -c50 -d${DURATION}s, 100 MiB artifact; $(machine)"
declare -a IB=() NG=() SCRIPTS=()
for r in $(seq "$RUNS"); do
    d=$WORK/ib; rm -rf "$d"; start_ironboot "$d"; import_image "$d" "$WORK/vmlinuz" "$WORK/initrd.img"
    read -r mbs _ < <(wrk_rate "http://127.0.0.1:8080/artifacts/sha256/$K")
    read -r _ rps < <(wrk_rate "http://127.0.0.1:8080/boot/02-57-00-00-00-01.ipxe?buildarch=x86_64")
    echo "run $r ironboot: artifact $mbs MiB/s, scripts $rps/s"
    IB+=("$mbs"); SCRIPTS+=("$rps")
    stop "$IRONBOOT_PID"
    start nginx nginx -c "$WORK/nginx.conf" -g 'daemon off;'; ngx=$LAST_PID; wait_tcp 8080
    read -r mbs _ < <(wrk_rate "http://127.0.0.1:8080/artifacts/sha256/$K")
    echo "run $r nginx: artifact $mbs MiB/s"
    NG+=("$mbs"); stop "$ngx"
done
a=$(median "${IB[@]}"); b=$(median "${NG[@]}")
echo "RESULT http artifact: ironboot $a MiB/s, nginx $b MiB/s; ironboot/nginx $(ratio "$a" "$b")x (runs: ${IB[*]} / ${NG[*]})"
echo "RESULT http scripts: ironboot $(median "${SCRIPTS[@]}") rendered scripts/s (runs: ${SCRIPTS[*]})"
