#!/usr/bin/env bash
# DHCP: Kea's perfdhcp as a relay against ironboot (full mode, leases
# persisted to SQLite), Kea (kea-dhcp4, memfile leases persisted) and dnsmasq
# (no-ping, lease file), with the same perfdhcp settings, servers alternating
# in one invocation. Each server first holds leases for the $CLIENTS distinct
# clients (a fill round of perfdhcp at 2,000/s; dnsmasq's lease file is
# prefilled as well, since it cannot be filled in bounded time), then is
# offered a ladder of rates ($RATES) for $PERIOD s each. Reported: the
# highest rate held with zero loss (see lib.sh dhcp_ladder: every DISCOVER
# and REQUEST answered within perfdhcp's 1 s drop time, no NAK, perfdhcp
# really sent the rate; one of $TRIALS trials per rate), median of $RUNS.
#
# perfdhcp runs in a client namespace joined to the servers' namespace by a
# veth pair (lib.sh setup_relay_ns): it relays from 10.78.0.1:67 to
# 10.77.0.1:67 and the servers answer the relay through a route back, so
# dnsmasq (which holds the wildcard port 67) and perfdhcp do not share a
# namespace. Then $CONTEXT_SERVERS are measured again with $CONTEXT_CLIENTS
# clients, for context (dnsmasq's rate depends on how many leases it holds).
source "$(dirname "$0")/lib.sh"
need perfdhcp kea-dhcp4 dnsmasq sqlite3 "$IRONBOOT"
CLIENTS="${CLIENTS:-20000}"
PERIOD="${PERIOD:-5}"
RATES="${RATES:-10 20 30 40 50 75 100 200 300 400 500 750 1000 1500 2000 3000 4000 5000 6000 7000 8000 9000 10000 12000}"
SERVERS="${SERVERS:-ironboot kea dnsmasq}"
CONTEXT_CLIENTS="${CONTEXT_CLIENTS:-100}"
CONTEXT_SERVERS="${CONTEXT_SERVERS-dnsmasq}"
FILL_ROUNDS="${FILL_ROUNDS:-6}"
TRIALS="${TRIALS:-2}"
setup_ns
setup_relay_ns

start_server() { # NAME [CLIENTS] → SERVER_PID (dnsmasq: leases for CLIENTS prefilled)
    local d=$WORK/$1; rm -rf "$d"; mkdir -p "$d"
    case $1 in
    ironboot)
        start_ironboot "$d"; SERVER_PID=$IRONBOOT_PID ;;
    kea)
        cat >"$d/kea.json" <<JSON
{ "Dhcp4": {
    "interfaces-config": { "interfaces": [ "vs0/10.77.0.1" ], "dhcp-socket-type": "udp" },
    "lease-database": { "type": "memfile", "persist": true, "name": "$d/kea-leases4.csv", "lfc-interval": 0 },
    "valid-lifetime": 3600,
    "subnet4": [ { "id": 1, "subnet": "10.78.0.0/16", "pools": [ { "pool": "10.78.1.1 - 10.78.250.254" } ] } ],
    "loggers": [ { "name": "kea-dhcp4", "severity": "WARN", "output_options": [ { "output": "$d/kea.log" } ] } ]
} }
JSON
        KEA_PIDFILE_DIR=$d KEA_LOCKFILE_DIR=$d start kea kea-dhcp4 -c "$d/kea.json"
        SERVER_PID=$LAST_PID; wait_udp 67 ;;
    dnsmasq)
        cat >"$d/dnsmasq.conf" <<CONF
port=0
no-resolv
no-hosts
no-ping
quiet-dhcp
quiet-tftp
listen-address=10.77.0.1
dhcp-range=10.78.1.1,10.78.250.254,255.255.0.0,1h
dhcp-lease-max=1000000
dhcp-leasefile=$d/dnsmasq.leases
CONF
        CLIENTS=${2:-$CLIENTS} prefill_dnsmasq "$d/dnsmasq.leases"
        start dnsmasq dnsmasq -k -u root --log-facility="$WORK/dnsmasq.syslog" -C "$d/dnsmasq.conf"; SERVER_PID=$LAST_PID; wait_udp 67 ;;
    esac
}

# leases NAME: how many distinct clients the server NAME holds a lease for
# (from its persisted leases: SQLite, Kea's CSV, dnsmasq's lease file).
leases() {
    local d=$WORK/$1
    case $1 in
    ironboot) leases_sql="SELECT count(DISTINCT mac) FROM leases WHERE state = 'bound'"
        if [ -n "${IRONBOOT_PG:-}" ]; then
            psql -Atq "$IRONBOOT_PG" -c "$leases_sql" 2>/dev/null || echo "?"
        else
            sqlite3 "file:$d/data/ironboot.db?mode=ro" "$leases_sql" 2>/dev/null || echo "?"
        fi ;;
    kea) tail -n +2 "$d/kea-leases4.csv" 2>/dev/null | cut -d, -f2 | sort -u | grep -c . || true ;;
    dnsmasq) # dnsmasq rewrites the whole file per change: read it until two reads agree
        local a b=-1
        for _ in $(seq 20); do
            a=$(grep -c . "$d/dnsmasq.leases" 2>/dev/null || true)
            [ "$a" = "$b" ] && break
            b=$a; sleep 0.5
        done
        echo "$a" ;;
    esac
}

# prefill_dnsmasq FILE: dnsmasq's lease file with leases for perfdhcp's
# clients, as its own fill would leave it. perfdhcp -R N numbers its
# clients' MACs up from 00:0c:01:02:03:00 (seen in every server's leases);
# 20,480 leases cover the 20,000. Without it dnsmasq cannot be filled in
# bounded time: it answers well under 100 exchanges/s once it holds a few
# thousand leases, so 6 fill rounds (78 s) left it about 5,000.
prefill_dnsmasq() {
    awk -v n="$(( (CLIENTS + 511) / 512 * 512 ))" -v expiry="$(( $(date +%s) + 3600 ))" 'BEGIN {
        for (i = 0; i < n; i++) {
            v = 16909056 + i   # 0x01020300 + i: the last four octets of the MAC
            mac = sprintf("00:0c:%02x:%02x:%02x:%02x", int(v / 16777216) % 256, int(v / 65536) % 256, int(v / 256) % 256, v % 256)
            printf "%d %s 10.78.%d.%d * 01:%s\n", expiry, mac, 1 + int(i / 250), 1 + i % 250, mac
        }
    }' >"$1"
}

echo "# dhcp: perfdhcp relayed ($DHCP_GIADDR -> $DHCP_SERVER through a veth), $CLIENTS clients, ${PERIOD}s per rate, up to $TRIALS trials per rate, rates: $RATES; $(machine)"
echo "# perfdhcp: $(perfdhcp -v 2>&1 | head -1); kea-dhcp4 $(kea-dhcp4 -v 2>&1 | head -1); $(dnsmasq --version | head -1)"
declare -A BEST
for r in $(seq "$RUNS"); do
    for s in $SERVERS; do
        start_server "$s"
        # Fill: 2,000/s for CLIENTS/2000 + 3 s, repeated (up to
        # $FILL_ROUNDS times) until 60 % of the clients hold a lease. One
        # round gives every client a lease on ironboot and Kea (perfdhcp
        # walks its clients in turn); dnsmasq starts prefilled.
        rounds=0
        while [ "$rounds" -lt "$FILL_ROUNDS" ]; do
            dhcp_fill; rounds=$((rounds + 1))
            filled=$(leases "$s")
            [ "$filled" != "?" ] && [ "$filled" -ge $((CLIENTS * 60 / 100)) ] && break
        done
        best=$(dhcp_ladder "run $r $s")
        echo "run $r $s: $best exchanges/s at zero loss ($filled clients held leases after $rounds fill rounds, $(leases "$s") at the end; load $(cut -d' ' -f1-3 /proc/loadavg))"
        BEST[$s]="${BEST[$s]:-} $best"
        stop "$SERVER_PID"
    done
    for s in $CONTEXT_SERVERS; do
        start_server "$s" "$CONTEXT_CLIENTS"
        best=$(CLIENTS=$CONTEXT_CLIENTS; dhcp_fill; dhcp_ladder "run $r $s $CONTEXT_CLIENTS clients")
        echo "run $r $s $CONTEXT_CLIENTS clients: $best exchanges/s at zero loss"
        BEST[$s-$CONTEXT_CLIENTS]="${BEST[$s-$CONTEXT_CLIENTS]:-} $best"
        stop "$SERVER_PID"
    done
done
for s in $SERVERS; do
    # shellcheck disable=SC2086
    m=$(median ${BEST[$s]})
    echo "RESULT dhcp $s: $m exchanges/s at zero loss with $CLIENTS clients (runs:${BEST[$s]})"
    eval "MED_$s=$m"
done
for s in $CONTEXT_SERVERS; do
    # shellcheck disable=SC2086
    echo "RESULT dhcp $s: $(median ${BEST[$s-$CONTEXT_CLIENTS]}) exchanges/s at zero loss with $CONTEXT_CLIENTS clients (runs:${BEST[$s-$CONTEXT_CLIENTS]})"
done
echo "RESULT dhcp ratios ($CLIENTS clients): ironboot/kea $(ratio "${MED_ironboot:-0}" "${MED_kea:-0}")x, ironboot/dnsmasq $(ratio "${MED_ironboot:-0}" "${MED_dnsmasq:-0}")x"
