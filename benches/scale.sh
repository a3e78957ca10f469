#!/usr/bin/env bash
# Inventory scale: the same server with 100 and with 100,000 machines in its
# database: DHCP zero-loss rate (perfdhcp ladder, as dhcp.sh) and API latency
# (wrk --latency, one connection: one page of 100 machines, and a filtered
# page) at p99. Medians of $RUNS.
source "$(dirname "$0")/lib.sh"
need perfdhcp wrk sqlite3 "$IRONBOOT"
SIZES="${SIZES:-100 100000}"
CLIENTS="${CLIENTS:-20000}"
DURATION="${DURATION:-5}"
setup_ns

# populate DIR N: N machines (and labels on every tenth) straight into SQLite.
populate() {
    sqlite3 "$1/data/ironboot.db" <<SQL
PRAGMA journal_mode=WAL;
WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < $2 - 1)
INSERT INTO machines (mac, arch, firmware, first_seen_ms, last_seen_ms)
SELECT printf('02:99:%02x:%02x:%02x:%02x', (i >> 24) & 255, (i >> 16) & 255, (i >> 8) & 255, i & 255),
       'bios', 'pxe', 0, 0 FROM c;
SQL
}

# p99 URL: wrk's 99th percentile latency in ms.
p99() {
    in_ns wrk -t1 -c1 -d"${DURATION}s" --latency -H "Authorization: Bearer $TOKEN" "$1" | tee -a "$WORK/wrk.log" |
        awk '$1 == "99%" { v=$2; u=v; gsub(/[0-9.]/,"",u); gsub(/[a-z]/,"",v);
             printf "%.2f\n", (u=="s") ? v*1000 : (u=="us") ? v/1000 : v }'
}

echo "# scale: machines in the database ${SIZES// / vs }; $(machine)"
declare -A RATE LIST FILTER
for r in $(seq "$RUNS"); do
    for n in $SIZES; do
        d=$WORK/ib-$n; rm -rf "$d"
        start_ironboot "$d"; stop "$IRONBOOT_PID"   # creates the schema
        populate "$d" "$n"
        start_ironboot "$d"; TOKEN=$(cat "$d/data/admin.token")
        dhcp_fill
        best=$(dhcp_ladder "run $r $n machines")
        list=$(p99 "http://127.0.0.1:8080/api/v1/machines?limit=100")
        filter=$(p99 "http://127.0.0.1:8080/api/v1/machines?limit=100&arch=bios&state=new")
        echo "run $r $n machines: dhcp $best/s, list p99 $list ms, filtered p99 $filter ms"
        RATE[$n]="${RATE[$n]:-} $best"; LIST[$n]="${LIST[$n]:-} $list"; FILTER[$n]="${FILTER[$n]:-} $filter"
        stop "$IRONBOOT_PID"
    done
done
for n in $SIZES; do
    # shellcheck disable=SC2086
    echo "RESULT scale $n machines: dhcp $(median ${RATE[$n]})/s, API list p99 $(median ${LIST[$n]}) ms, filtered p99 $(median ${FILTER[$n]}) ms"
done
