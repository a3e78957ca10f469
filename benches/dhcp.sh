#!/usr/bin/env bash
# DHCP: Kea's perfdhcp as a relay (giaddr 127.0.0.2) against ironboot (full
# mode, leases persisted to SQLite), Kea (kea-dhcp4, memfile leases
# persisted) and dnsmasq (no-ping, lease file), each first filled with
# $CLIENTS distinct clients holding leases, then offered a ladder of rates for
# $PERIOD s each. Reported: the highest rate with zero drops (DISCOVER/OFFER
# and REQUEST/ACK), median of $RUNS, servers alternating in one invocation.
source "$(dirname "$0")/lib.sh"
need perfdhcp kea-dhcp4 dnsmasq jq "$IRONBOOT"
CLIENTS="${CLIENTS:-20000}"
PERIOD="${PERIOD:-5}"
RATES="${RATES:-1000 2000 4000 6000 8000 10000 12000}"
SERVERS="${SERVERS:-ironboot kea dnsmasq}"
setup_ns

start_server() { # name → SERVER_PID
    local d=$WORK/$1; rm -rf "$d"; mkdir -p "$d"
    case $1 in
    ironboot)
        start_ironboot "$d"; SERVER_PID=$IRONBOOT_PID ;;
    kea)
        cat >"$d/kea.json" <<JSON
{ "Dhcp4": {
    "interfaces-config": { "interfaces": [ "lo/127.0.0.1" ], "dhcp-socket-type": "udp" },
    "lease-database": { "type": "memfile", "persist": true, "name": "$d/kea-leases4.csv", "lfc-interval": 0 },
    "valid-lifetime": 3600,
    "subnet4": [ { "id": 1, "subnet": "127.0.0.0/16", "pools": [ { "pool": "127.0.1.1 - 127.0.250.254" } ] } ],
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
listen-address=127.0.0.1
dhcp-range=127.0.1.1,127.0.250.254,255.255.0.0,1h
dhcp-lease-max=1000000
dhcp-leasefile=$d/dnsmasq.leases
CONF
        start dnsmasq dnsmasq -k -u root --log-facility="$WORK/dnsmasq.syslog" -C "$d/dnsmasq.conf"; SERVER_PID=$LAST_PID; wait_udp 67 ;;
    esac
}

echo "# dhcp: perfdhcp relayed, $CLIENTS clients, ${PERIOD}s per rate; $(machine)"
declare -A BEST
for r in $(seq "$RUNS"); do
    for s in $SERVERS; do
        start_server "$s"
        dhcp_fill
        best=$(dhcp_ladder "run $r $s")
        BEST[$s]="${BEST[$s]:-} $best"
        stop "$SERVER_PID"
    done
done
for s in $SERVERS; do
    # shellcheck disable=SC2086
    m=$(median ${BEST[$s]})
    echo "RESULT dhcp $s: $m exchanges/s at zero loss (runs:${BEST[$s]})"
    eval "MED_$s=$m"
done
echo "RESULT dhcp ratios: ironboot/kea $(ratio "${MED_ironboot:-0}" "${MED_kea:-0}")x, ironboot/dnsmasq $(ratio "${MED_ironboot:-0}" "${MED_dnsmasq:-0}")x"
