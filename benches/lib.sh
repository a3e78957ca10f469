# Shared helpers for the benchmark scripts (sourced, not run).
#
# Everything runs inside one network namespace this script creates (only its
# loopback is up), so the DHCP servers under test never see a real network;
# every process started is stopped by its PID; the namespace and the work
# directory are removed on exit. Needs root (namespaces, ports 67 and 69).

set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/.." && pwd)"
: "${CARGO_TARGET_DIR:=$REPO/target}"
IRONBOOT="${IRONBOOT:-$CARGO_TARGET_DIR/release/ironboot}"
STORM="${STORM:-$CARGO_TARGET_DIR/release/ironboot-storm}"
RUNS="${RUNS:-3}"
NS="ironboot-bench-$$"
WORK="$(mktemp -d /tmp/ironboot-bench.XXXXXX)"
chmod 755 "$WORK"   # peers that drop privileges (tftpd-hpa) read from it
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

need() {
    local p
    for p in "$@"; do
        command -v "$p" >/dev/null || { echo "missing $p (apt-get install it)" >&2; exit 2; }
    done
}

setup_ns() {
    [ "$(id -u)" = 0 ] || { echo "benchmarks need root (network namespace)" >&2; exit 2; }
    ip netns add "$NS"
    ip -n "$NS" link set lo up
    # perfdhcp's relay address must be an interface address.
    ip -n "$NS" addr add 127.0.0.2/32 dev lo
}

# in_ns CMD...: runs CMD inside the namespace.
in_ns() { ip netns exec "$NS" "$@"; }

# start NAME CMD...: starts CMD in the namespace in the background; sets
# LAST_PID (the command's own PID: `ip netns exec` execs it).
start() {
    local name=$1; shift
    ip netns exec "$NS" "$@" >"$WORK/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# stop PID: SIGTERM, wait up to 20 s (a server flushing its ledger), then
# SIGKILL.
stop() {
    local pid=$1
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

# wait_tcp PORT: until something listens on 127.0.0.1:PORT (10 s).
wait_tcp() {
    for _ in $(seq 100); do
        in_ns bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1; logs:" >&2; tail -n5 "$WORK"/*.log "$WORK"/*.err >&2 2>/dev/null; return 1
}

# wait_udp PORT: until a UDP socket is bound on PORT in the namespace.
wait_udp() {
    for _ in $(seq 100); do
        [ -n "$(in_ns ss -Hulpn "sport = :$1")" ] && return 0
        sleep 0.1
    done
    echo "nothing bound on UDP port $1; logs:" >&2; tail -n5 "$WORK"/*.log "$WORK"/*.err >&2 2>/dev/null; return 1
}

# median N...: the median of numbers.
median() {
    printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'
}

# ratio A B: A/B with two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "inf"; else printf "%.2f\n", a / b }'; }

machine() {
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GiB RAM, $(uname -r), $(date -u +%FT%TZ)"
}

# A throwaway file of N bytes (deterministic content).
make_file() {
    head -c "$2" /dev/urandom >"$1"
}

# ironboot_config DIR EXTRA: a full-mode config serving a relayed /16 on
# 127.77.0.0 and 127.0.0.0 (perfdhcp's giaddr), DHCP on 67, TFTP on 69,
# HTTP on 8080, everything on loopback inside the namespace.
ironboot_config() {
    cat <<TOML
server_ip = "127.0.0.1"
data_dir = "$1/data"
[http]
listen = "127.0.0.1:8080"
[tftp]
listen = "127.0.0.1:69"
ipxe_dir = "$1/tftp"
max_windowsize = 64
${2:-}
[dhcp]
mode = "full"
serve_all = true
listen = "127.0.0.1:67"
offer_timeout = "30s"
[[dhcp.subnet]]
network = "127.77.0.0/16"
range = ["127.77.1.1", "127.77.250.254"]
lease_time = "1h"
[[dhcp.subnet]]
network = "127.0.0.0/16"
range = ["127.0.1.1", "127.0.250.254"]
lease_time = "1h"
TOML
}

# start_ironboot DIR [EXTRA-TFTP-KEYS]: sets IRONBOOT_PID, waits for HTTP.
start_ironboot() {
    mkdir -p "$1/data" "$1/tftp"
    ironboot_config "$1" "${2:-}" >"$1/ironboot.toml"
    IRONBOOT_LOG=warn start ironboot "$IRONBOOT" serve --config "$1/ironboot.toml"
    IRONBOOT_PID=$LAST_PID
    wait_tcp 8080
}

# import_image DIR KERNEL INITRD: uploads both, imports generation 1 of
# stream "storm" and points the default group at it.
import_image() {
    local token k i
    token=$(cat "$1/data/admin.token")
    k=$(sha256sum "$2" | cut -d' ' -f1)
    i=$(sha256sum "$3" | cut -d' ' -f1)
    in_ns curl -fsS -o /dev/null -X PUT -H "Authorization: Bearer $token" --data-binary "@$2" "http://127.0.0.1:8080/api/v1/artifacts/sha256/$k"
    in_ns curl -fsS -o /dev/null -X PUT -H "Authorization: Bearer $token" --data-binary "@$3" "http://127.0.0.1:8080/api/v1/artifacts/sha256/$i"
    in_ns curl -fsS -o /dev/null -X POST -H "Authorization: Bearer $token" -H 'content-type: application/json' \
        -d "{\"arch\":\"x86_64\",\"kernel\":{\"name\":\"vmlinuz\",\"digest\":\"$k\",\"size\":$(stat -c%s "$2")},\"initrds\":[{\"name\":\"initrd.img\",\"digest\":\"$i\",\"size\":$(stat -c%s "$3")}],\"rootfs\":null,\"cmdline\":\"console=ttyS0\"}" \
        http://127.0.0.1:8080/api/v1/streams/storm/generations
    in_ns curl -fsS -o /dev/null -X PUT -H "Authorization: Bearer $token" -H 'content-type: application/json' \
        -d '{"stream":"storm","generation":1}' http://127.0.0.1:8080/api/v1/groups/default/generation
}

# perfdhcp as a relay on 127.0.0.2:67 against 127.0.0.1:67.
# perf RATE SECONDS: prints "sent drops" of the 4-way exchanges.
perf() {
    local out drops sent
    out=$(in_ns timeout $(($2 + 30)) perfdhcp -4 -l 127.0.0.2 -L 67 -r "$1" -p "$2" -R "${CLIENTS:-20000}" -W 2000000 127.0.0.1 2>&1 || true)
    echo "$out" >>"$WORK/perfdhcp.log"
    drops=$(echo "$out" | awk '/^drops:/ {s+=$2} END {print s+0}')
    sent=$(echo "$out" | awk '/^sent packets:/ {s+=$3} END {print s+0}')
    echo "$sent $drops"
}

# dhcp_fill: $CLIENTS random clients at 2,000/s until about all hold a lease.
dhcp_fill() { perf 2000 $((${CLIENTS:-20000} / 2000 + 3)) >/dev/null; }

# dhcp_ladder LABEL: offers each rate in $RATES for $PERIOD s; prints (on
# stdout, last line) the highest rate with zero drops; details on stderr.
dhcp_ladder() {
    local best=0 rate sent drops
    for rate in ${RATES:-1000 2000 4000 6000 8000 10000 12000}; do
        read -r sent drops < <(perf "$rate" "${PERIOD:-5}")
        echo "$1 rate $rate: sent $sent drops $drops" >&2
        if [ "$sent" -gt 0 ] && [ "$drops" = 0 ]; then best=$rate; else break; fi
    done
    echo "$best"
}
