# Shared helpers for the benchmark scripts (sourced, not run).
#
# Everything runs inside network namespaces this script creates: the server
# namespace (its loopback, and for the DHCP benchmark a veth to a client
# namespace), so the DHCP servers under test never see a real network; every
# process started is stopped by its PID; the namespaces and the work
# directory are removed on exit. Needs root (namespaces, ports 67 and 69).

set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/.." && pwd)"
: "${CARGO_TARGET_DIR:=$REPO/target}"
IRONBOOT="${IRONBOOT:-$CARGO_TARGET_DIR/release/ironboot}"
STORM="${STORM:-$CARGO_TARGET_DIR/release/ironboot-storm}"
RUNS="${RUNS:-3}"
NS="ironboot-bench-$$"
NSC=""   # the client namespace, when setup_relay_ns made one
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
    if [ -n "$NSC" ]; then ip netns del "$NSC" 2>/dev/null || true; fi
    if [ -n "${KEEP_WORK:-}" ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
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

# The DHCP path perfdhcp uses: by default a relay on the server's own
# loopback (127.0.0.2:67 → 127.0.0.1:67). setup_relay_ns changes it.
DHCP_SERVER=127.0.0.1   # where the server under test listens for DHCP
DHCP_GIADDR=127.0.0.2   # perfdhcp's relay address (giaddr; replies go there)
PERF_NS=$NS             # the namespace perfdhcp runs in

# setup_relay_ns: a second namespace for the load tool (the client side),
# joined to the server namespace by a veth pair. The client end has
# 10.77.0.2/24 and the relay address 10.78.0.1/32 (perfdhcp's giaddr); the
# server end has 10.77.0.1/24 and a route to 10.78.0.0/16 through the client
# end, as behind a real DHCP relay. perfdhcp then binds port 67 in its own
# namespace, so a server holding the wildcard port 67 (dnsmasq) is no
# obstacle. Call after setup_ns.
setup_relay_ns() {
    NSC="ironboot-bench-c-$$"
    ip netns add "$NSC"
    ip -n "$NSC" link set lo up
    ip link add ibb-s$$ netns "$NS" type veth peer name ibb-c$$ netns "$NSC"
    ip -n "$NS" link set ibb-s$$ name vs0
    ip -n "$NSC" link set ibb-c$$ name vc0
    ip -n "$NS" addr add 10.77.0.1/24 dev vs0
    ip -n "$NSC" addr add 10.77.0.2/24 dev vc0
    ip -n "$NSC" addr add 10.78.0.1/32 dev vc0
    ip -n "$NS" link set vs0 up
    ip -n "$NSC" link set vc0 up
    ip -n "$NS" route add 10.78.0.0/16 via 10.77.0.2 dev vs0
    DHCP_SERVER=10.77.0.1
    DHCP_GIADDR=10.78.0.1
    PERF_NS=$NSC
    # both ends up, and the addresses usable (no duplicate detection pending): 5 s
    for _ in $(seq 50); do
        if ip -n "$NS" -br link show vs0 | grep -q ' UP ' &&
            ip -n "$NSC" -br link show vc0 | grep -q ' UP ' &&
            ! ip -n "$NSC" addr show dev vc0 | grep -q tentative; then
            return 0
        fi
        sleep 0.1
    done
    echo "veth between $NS and $NSC did not come up" >&2; return 1
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

# Every perfdhcp client is new to the server: the rate limit for
# never-seen clients (a hostile-network bound) is off for the benchmarks.
# IRONBOOT_DHCP_EXTRA="" drops these keys (a binary older than them).
NO_NEW_CLIENT_LIMIT='new_clients_per_minute = 0
new_clients_per_minute_total = 0'

# IRONBOOT_PG=URL: ironboot's store is that PostgreSQL database instead of
# SQLite (the scripts empty it first: it must be a database for benchmarks).
#
# ironboot_config DIR EXTRA: a full-mode config serving a relayed /16 on
# 127.77.0.0, 127.0.0.0 (perfdhcp's giaddr on loopback) and 10.78.0.0
# (perfdhcp's giaddr through the veth), DHCP on $DHCP_SERVER:67, TFTP on 69
# and HTTP on 8080 on loopback, all inside the namespace.
ironboot_config() {
    cat <<TOML
server_ip = "$DHCP_SERVER"
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
listen = "$DHCP_SERVER:67"
offer_timeout = "30s"
${IRONBOOT_DHCP_EXTRA-$NO_NEW_CLIENT_LIMIT}
[[dhcp.subnet]]
network = "127.77.0.0/16"
range = ["127.77.1.1", "127.77.250.254"]
lease_time = "1h"
[[dhcp.subnet]]
network = "127.0.0.0/16"
range = ["127.0.1.1", "127.0.250.254"]
lease_time = "1h"
[[dhcp.subnet]]
network = "10.78.0.0/16"
range = ["10.78.1.1", "10.78.250.254"]
lease_time = "1h"
${IRONBOOT_EXTRA:-}
${IRONBOOT_PG:+[store]
url = \"$IRONBOOT_PG\"}
TOML
}

# start_ironboot DIR [EXTRA-TFTP-KEYS]: sets IRONBOOT_PID, waits for HTTP.
start_ironboot() {
    mkdir -p "$1/data" "$1/tftp"
    if [ -n "${IRONBOOT_PG:-}" ]; then
        psql -q "$IRONBOOT_PG" -c "DROP SCHEMA public CASCADE" -c "CREATE SCHEMA public" >/dev/null
    fi
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

# perfdhcp as a relay on $DHCP_GIADDR:67 against $DHCP_SERVER:67.
# perf RATE SECONDS: prints "sent drops naks discovers" of the 4-way
# exchanges: packets sent (both exchanges), drops (no answer within
# perfdhcp's drop time, 1 s), NAKs (perfdhcp's "rejected leases") and the
# DISCOVERs sent (to check that perfdhcp itself offered the rate).
perf() {
    local out s0 c0
    s0=$(rcvbuf_errors "$NS"); c0=$(rcvbuf_errors "$PERF_NS")
    out=$(ip netns exec "$PERF_NS" timeout $(($2 + 30)) perfdhcp -4 -l "$DHCP_GIADDR" -L 67 -r "$1" -p "$2" -R "${CLIENTS:-20000}" -W 2000000 "$DHCP_SERVER" 2>&1 || true)
    echo "$out" >>"$WORK/perfdhcp.log"
    # where datagrams overflowed a socket receive buffer during the run:
    # the server's namespace (the server fell behind) or perfdhcp's
    LAST_RCVBUF="server $(($(rcvbuf_errors "$NS") - s0)) perfdhcp $(($(rcvbuf_errors "$PERF_NS") - c0))"
    echo "$LAST_RCVBUF" >"$WORK/rcvbuf.last"
    echo "$out" | awk '
        /^\*\*\*Statistics for: DISCOVER-OFFER/ { ex = "do" }
        /^\*\*\*Statistics for: REQUEST-ACK/ { ex = "ra" }
        /^sent packets:/ { sent += $3; if (ex == "do") disc = $3 }
        /^drops:/ { drops += $2 }
        /^rejected leases:/ { naks += $3 }
        END { print sent + 0, drops + 0, naks + 0, disc + 0 }'
}

# rcvbuf_errors NS: UDP datagrams the kernel dropped in NS for a full socket
# receive buffer (/proc/net/snmp is per namespace).
rcvbuf_errors() {
    ip netns exec "$1" awk '/^Udp:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "RcvbufErrors") c = i; h = 1 } else print $c }' /proc/net/snmp
}

# dhcp_fill: $CLIENTS random clients at 2,000/s until about all hold a lease.
dhcp_fill() { perf 2000 $((${CLIENTS:-20000} / 2000 + 3)) >/dev/null; }

# dhcp_ladder LABEL: offers each rate in $RATES for $PERIOD s, lowest first,
# and stops at the first rate that is not held; prints (on stdout, last
# line) the highest rate held, details on stderr. A trial at a rate has zero
# loss when every DISCOVER and REQUEST was answered within the drop time and
# none with a NAK; it counts only when perfdhcp really sent the rate (at
# least 95 % of rate x period DISCOVERs: otherwise the load tool, not the
# server, was the limit). A rate is held when one of $TRIALS trials at it
# has zero loss: on a shared machine one stall of another process can cost
# a single trial a few hundred answers, and a server at its limit fails
# every trial anyway. The same rule applies to every server.
dhcp_ladder() {
    local best=0 rate sent drops naks disc want trial held
    for rate in ${RATES:-1000 2000 4000 6000 8000 10000 12000}; do
        held=0
        for trial in $(seq "${TRIALS:-2}"); do
            read -r sent drops naks disc < <(perf "$rate" "${PERIOD:-5}")
            want=$((rate * ${PERIOD:-5} * 95 / 100))
            echo "$1 rate $rate trial $trial: sent $sent drops $drops naks $naks discovers $disc; receive buffer overflows: $(cat "$WORK/rcvbuf.last")" >&2
            if [ "$disc" -lt "$want" ]; then
                echo "$1 rate $rate: perfdhcp sent $disc DISCOVERs, under 95 % of the rate: not counted" >&2
                break
            fi
            if [ "$drops" = 0 ] && [ "$naks" = 0 ]; then held=1; break; fi
        done
        if [ "$held" = 1 ]; then best=$rate; else break; fi
    done
    echo "$best"
}
