#!/usr/bin/env bash
# DHCPv6: Kea's perfdhcp -6 as $CLIENTS clients on a link against ironboot
# ([dhcp6] mode "full", leases persisted to SQLite; a Reply that binds
# leaves only after its commit) and Kea (kea-dhcp6, memfile leases
# persisted, lfc-interval 0), with the same perfdhcp settings, servers
# alternating in one invocation. 4-way exchanges (Solicit/Advertise,
# Request/Reply, perfdhcp's default for -6), one IA_NA each. Each server
# first holds leases for the $CLIENTS clients (a fill round at 2,000/s),
# then is offered a ladder of rates ($RATES) for $PERIOD s each. Reported:
# the highest rate held (dhcp6_ladder below: under $MAX_DROP_PERMILLE per
# mille of perfdhcp's packets unanswered within its 1 s drop time, no
# rejected lease, perfdhcp really sent the rate; one of $TRIALS trials per
# rate), median of $RUNS.
#
# No relay: perfdhcp runs in a client namespace joined to the servers'
# namespace by a veth pair (setup_link6_ns), sends from the link-local
# address of its end (vc0, also fd00:99::2/64) to ff02::1:2, port 546 →
# 547, and the servers answer it on the link; the server's end (vs0) has
# fd00:99::1/64. Duplicate address detection is off in both namespaces.
source "$(dirname "$0")/lib.sh"
need perfdhcp kea-dhcp6 sqlite3 curl "$IRONBOOT"
CLIENTS="${CLIENTS:-20000}"
PERIOD="${PERIOD:-5}"
RATES="${RATES:-1000 2000 3000 4000 4500 5000 5500 6000 6500 7000 7500 8000 9000 10000 12000}"
SERVERS="${SERVERS:-ironboot kea}"
FILL_ROUNDS="${FILL_ROUNDS:-3}"
TRIALS="${TRIALS:-2}"
# a trial holds when drops * 1000 / sent < MAX_DROP_PERMILLE (1: < 0.1 %);
# 0 asks for zero loss, as benches/dhcp.sh does
MAX_DROP_PERMILLE="${MAX_DROP_PERMILLE:-1}"
# The clients' DUIDs: DUID-LL (type 3) of perfdhcp's base MAC, which
# perfdhcp varies per client, so every invocation is the same $CLIENTS
# clients. DUID=llt keeps perfdhcp's default DUID-LLT, whose time field
# changes per invocation: Kea (which keys leases by DUID) then sees
# $CLIENTS new clients in every trial, ironboot (which keys by the MAC in
# the DUID) the same ones.
DUID="${DUID:-00030001000c01020304}"
setup_ns

# setup_link6_ns: the client namespace and the veth pair (vs0 in the
# server namespace, vc0 in the client's), both ends' addresses usable at
# once (DAD off); waits until both ends are up with link-local addresses.
setup_link6_ns() {
    NSC="ironboot-bench-c-$$"
    ip netns add "$NSC"
    ip -n "$NSC" link set lo up
    local n
    for n in "$NS" "$NSC"; do
        ip netns exec "$n" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
    done
    ip link add ibb-s$$ netns "$NS" type veth peer name ibb-c$$ netns "$NSC"
    ip -n "$NS" link set ibb-s$$ name vs0
    ip -n "$NSC" link set ibb-c$$ name vc0
    ip -n "$NS" addr add fd00:99::1/64 dev vs0 nodad
    ip -n "$NSC" addr add fd00:99::2/64 dev vc0 nodad
    ip -n "$NS" link set vs0 up
    ip -n "$NSC" link set vc0 up
    PERF_NS=$NSC
    # 5 s
    for _ in $(seq 50); do
        if ip -n "$NS" -br link show vs0 | grep -q ' UP ' &&
            ip -n "$NSC" -br link show vc0 | grep -q ' UP ' &&
            ip -n "$NS" -6 addr show dev vs0 scope link | grep -q fe80 &&
            ip -n "$NSC" -6 addr show dev vc0 scope link | grep -q fe80 &&
            ! ip -n "$NSC" addr show dev vc0 | grep -q tentative &&
            ! ip -n "$NS" addr show dev vs0 | grep -q tentative; then
            return 0
        fi
        sleep 0.1
    done
    echo "veth between $NS and $NSC did not come up" >&2; return 1
}
setup_link6_ns
DUID_ARG=()
[ "$DUID" = llt ] || DUID_ARG=(-b "duid=$DUID")

# rcvbuf6_errors NS: UDP-over-IPv6 datagrams the kernel dropped in NS for
# a full socket receive buffer (lib.sh's rcvbuf_errors reads /proc/net/snmp,
# which counts IPv4 only; IPv6's counters are in /proc/net/snmp6).
rcvbuf6_errors() {
    ip netns exec "$1" awk '$1 == "Udp6RcvbufErrors" { print $2 }' /proc/net/snmp6
}

# perf6 RATE SECONDS: perfdhcp -6 from vc0 to ff02::1:2; prints "sent
# drops rejected solicits orphans": packets sent (both exchanges), drops
# (no answer within perfdhcp's drop time, 1 s), rejected leases, the
# SOLICITs sent (to check that perfdhcp itself offered the rate), orphans
# (answers that matched no exchange: late or duplicate). LAST_RCVBUF: the
# receive-buffer overflows in each namespace during the run.
perf6() {
    local out s0 c0
    s0=$(rcvbuf6_errors "$NS"); c0=$(rcvbuf6_errors "$PERF_NS")
    out=$(ip netns exec "$PERF_NS" timeout $(($2 + 30)) perfdhcp -6 -l vc0 -r "$1" -p "$2" -R "$CLIENTS" ${DUID_ARG[@]+"${DUID_ARG[@]}"} -W 2000000 all 2>&1 || true)
    echo "$out" >>"$WORK/perfdhcp.log"
    echo "server $(($(rcvbuf6_errors "$NS") - s0)) perfdhcp $(($(rcvbuf6_errors "$PERF_NS") - c0))" >"$WORK/rcvbuf.last"
    echo "$out" | awk '
        /^\*\*\*Statistics for: SOLICIT-ADVERTISE/ { ex = "sa" }
        /^\*\*\*Statistics for: REQUEST-REPLY/ { ex = "rr" }
        /^sent packets:/ { sent += $3; if (ex == "sa") sol = $3 }
        /^drops:/ { drops += $2 }
        /^rejected leases:/ { rej += $3 }
        /^orphans:/ { orph += $2 }
        END { print sent + 0, drops + 0, rej + 0, sol + 0, orph + 0 }'
}

# dhcp6_ladder LABEL: offers each rate in $RATES for $PERIOD s, lowest
# first, and stops at the first rate not held; prints (stdout, last line)
# the highest rate held, details on stderr. A trial holds when under
# $MAX_DROP_PERMILLE per mille of the packets sent went unanswered, no
# lease was rejected, and perfdhcp really sent the rate (at least 95 % of
# rate x period SOLICITs: otherwise the load tool was the limit). A rate
# is held when one of $TRIALS trials holds (the same rule as dhcp.sh's
# ladder, for every server).
dhcp6_ladder() {
    local best=0 rate sent drops rej sol orph want trial held
    for rate in $RATES; do
        held=0
        for trial in $(seq "$TRIALS"); do
            read -r sent drops rej sol orph < <(perf6 "$rate" "$PERIOD")
            want=$((rate * PERIOD * 95 / 100))
            echo "$1 rate $rate trial $trial: sent $sent drops $drops rejected $rej solicits $sol orphans $orph; receive buffer overflows: $(cat "$WORK/rcvbuf.last")" >&2
            if [ "$sol" -lt "$want" ]; then
                echo "$1 rate $rate: perfdhcp sent $sol SOLICITs, under 95 % of the rate: not counted" >&2
                break
            fi
            if [ "$rej" = 0 ] && [ $((drops * 1000)) -lt $((sent * MAX_DROP_PERMILLE)) -o "$drops" = 0 ]; then
                held=1; break
            fi
        done
        if [ "$held" = 1 ]; then best=$rate; else break; fi
    done
    echo "$best"
}

# cpu_seconds PID: user + system CPU time of the process so far.
cpu_seconds() {
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.1f\n", ($12 + $13) / hz }' "/proc/$1/stat" 2>/dev/null || echo "?"
}

start_server() { # NAME → SERVER_PID
    local d=$WORK/$1; rm -rf "$d"; mkdir -p "$d"
    case $1 in
    ironboot)
        mkdir -p "$d/data"
        if [ -n "${IRONBOOT_PG:-}" ]; then
            psql -q "$IRONBOOT_PG" -c "DROP SCHEMA public CASCADE" -c "CREATE SCHEMA public" >/dev/null
        fi
        cat >"$d/ironboot.toml" <<TOML
data_dir = "$d/data"
[http]
listen = "127.0.0.1:8080"
[tftp]
enabled = false
[dhcp]
mode = "off"
${IRONBOOT_DHCP_EXTRA-$NO_NEW_CLIENT_LIMIT}
[dhcp6]
mode = "full"
interfaces = ["vs0"]
server_ip = "fd00:99::1"
prefix = "fd00:99::/64"
range = ["fd00:99::1:0", "fd00:99::ffff:ffff"]
lease_time = "1h"
router_advertisement = "off"
${IRONBOOT_EXTRA:-}
${IRONBOOT_PG:+[store]
url = \"$IRONBOOT_PG\"}
TOML
        IRONBOOT_LOG=warn start ironboot "$IRONBOOT" serve --config "$d/ironboot.toml"
        SERVER_PID=$LAST_PID; wait_tcp 8080; wait_udp 547 ;;
    kea)
        cat >"$d/kea.json" <<JSON
{ "Dhcp6": {
    "interfaces-config": { "interfaces": [ "vs0" ] },
    "server-id": { "type": "LLT", "persist": false },
    "lease-database": { "type": "memfile", "persist": true, "name": "$d/kea-leases6.csv", "lfc-interval": 0 },
    "preferred-lifetime": 3600, "valid-lifetime": 3600, "renew-timer": 1800, "rebind-timer": 2880,
    "subnet6": [ { "id": 1, "subnet": "fd00:99::/64", "interface": "vs0",
                   "pools": [ { "pool": "fd00:99::1:0 - fd00:99::ffff:ffff" } ] } ],
    "loggers": [ { "name": "kea-dhcp6", "severity": "WARN", "output_options": [ { "output": "$d/kea.log" } ] } ]
} }
JSON
        KEA_PIDFILE_DIR=$d KEA_LOCKFILE_DIR=$d start kea kea-dhcp6 -c "$d/kea.json"
        SERVER_PID=$LAST_PID; wait_udp 547 ;;
    esac
}

# leases NAME: distinct clients holding a lease, from the persisted leases
# (ironboot: IPv6 rows, those with an IAID; Kea: its CSV's DUIDs).
leases() {
    local d=$WORK/$1 sql="SELECT count(DISTINCT mac) FROM leases WHERE state = 'bound' AND iaid IS NOT NULL"
    case $1 in
    ironboot)
        if [ -n "${IRONBOOT_PG:-}" ]; then
            psql -Atq "$IRONBOOT_PG" -c "$sql" 2>/dev/null || echo "?"
        else
            sqlite3 "file:$d/data/ironboot.db?mode=ro" "$sql" 2>/dev/null || echo "?"
        fi ;;
    kea) tail -n +2 "$d/kea-leases6.csv" 2>/dev/null | cut -d, -f2 | sort -u | grep -c . || true ;;
    esac
}

# answered NAME: for ironboot, its own count of DHCPv6 replies (/metrics).
answered() {
    [ "$1" = ironboot ] || { echo "-"; return; }
    in_ns curl -fsS http://127.0.0.1:8080/metrics 2>/dev/null |
        awk '/^ironboot_dhcp6_(replies|ignored|no_mac|send_errors|no_addrs)_total / { sub(/^ironboot_dhcp6_/, "", $1); sub(/_total$/, "", $1); printf "%s%s %s", sep, $1, $2; sep = ", " }'
}

echo "# dhcp6: perfdhcp -6 on the link (vc0 -> ff02::1:2 through a veth), 4-way exchanges, $CLIENTS clients (DUID $DUID), ${PERIOD}s per rate, up to $TRIALS trials per rate, held below $MAX_DROP_PERMILLE per mille drops, rates: $RATES; $(machine)"
echo "# perfdhcp: $(perfdhcp -v 2>&1 | head -1); kea-dhcp6 $(kea-dhcp6 -v 2>&1 | head -1); ironboot $IRONBOOT"
declare -A BEST
for r in $(seq "$RUNS"); do
    for s in $SERVERS; do
        start_server "$s"
        # A few exchanges first (10 clients, 5/s for 2 s): a server that
        # answers nothing is an error, not a rate of 0. (Not `-n 1`:
        # perfdhcp 2.2 then exits before a Reply that takes a few
        # milliseconds, whatever -W says, and counts it dropped.)
        read -r sent drops _ _ _ < <(CLIENTS=10 perf6 5 2)
        if [ "$sent" -lt 10 ] || [ "$drops" != 0 ]; then
            echo "run $r $s: not every probe exchange answered (sent $sent, drops $drops; $(answered "$s")); logs in $WORK" >&2
            tail -n 30 "$WORK/perfdhcp.log" >&2; KEEP_WORK=1; exit 1
        fi
        # Fill: 2,000/s for CLIENTS/2000 + 3 s, repeated (up to
        # $FILL_ROUNDS times) until 60 % of the clients hold a lease.
        rounds=0
        while [ "$rounds" -lt "$FILL_ROUNDS" ]; do
            perf6 2000 $((CLIENTS / 2000 + 3)) >/dev/null; rounds=$((rounds + 1))
            filled=$(leases "$s")
            [ "$filled" != "?" ] && [ "$filled" -ge $((CLIENTS * 60 / 100)) ] && break
        done
        cpu0=$(cpu_seconds "$SERVER_PID")
        best=$(dhcp6_ladder "run $r $s")
        echo "run $r $s: $best exchanges/s held ($filled clients held leases after $rounds fill rounds, $(leases "$s") at the end; server CPU in the ladder $(awk -v a="$(cpu_seconds "$SERVER_PID")" -v b="$cpu0" 'BEGIN { printf "%.1f", a - b }') s; counters: $(answered "$s"); load $(cut -d' ' -f1-3 /proc/loadavg))"
        BEST[$s]="${BEST[$s]:-} $best"
        stop "$SERVER_PID"
    done
done
for s in $SERVERS; do
    # shellcheck disable=SC2086
    m=$(median ${BEST[$s]})
    echo "RESULT dhcp6 $s: $m exchanges/s held with $CLIENTS clients (runs:${BEST[$s]})"
    eval "MED_$s=$m"
done
echo "RESULT dhcp6 ratio ($CLIENTS clients): ironboot/kea $(ratio "${MED_ironboot:-0}" "${MED_kea:-0}")x"
