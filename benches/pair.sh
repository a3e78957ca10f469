#!/usr/bin/env bash
# The HA pairs under a boot storm: N simulated machines (default 1,000,
# full flow, every machine whose boot failed starts over from DHCP up to 3
# times, as a watchdog would restart it), three arms alternating in one
# invocation, $RUNS runs of each (one server, standby pair, split pair in
# every run):
#
#   one server  one ironboot ([store] standby = true, alone: it takes the
#               claim at once) on 127.0.0.1;
#   pair        server A on 127.0.0.1 and server B on 127.0.0.2 (same
#               ports, own data_dir, server_name a/b, server_ip its own
#               address, both standby = true, the same database); the
#               relay forwards every DHCP message to both; A is killed with
#               SIGKILL once a fifth of the machines confirmed. Failover:
#               from the kill to B's /healthz answering (50 ms polls).
#   split pair  A and B as in "pair", but [store] shared = true instead of
#               standby = true and [dhcp] peer = "b" / "a": both answer
#               DHCP, each for its half of the clients (a hash of the MAC).
#               The storm starts once B has copied both artifacts (at most
#               60 s) and 3 s more (each answers its own half 1.2 s after
#               the other sees it); the relay forwards every DHCP message
#               to both. Once a fifth of the machines confirmed, the server
#               with the higher ironboot_dhcp_replies_total on /metrics is
#               killed with SIGKILL (A on a tie). Failover: from the kill
#               to a new "HA partner gone" line in the survivor's log
#               (warn level; 50 ms polls, 30 s bound), not to a DHCP
#               answer for the dead server's half, which this script does
#               not send. --server-pid is B's (the dead one is not known
#               when the storm starts), so when B is the one killed the
#               report has no server CPU / RSS (printed as "-").
#
# All on the PostgreSQL database IRONBOOT_PG (required; emptied before
# every run and at the end: it must be a database for benchmarks), with
# the same artifacts (a ${KERNEL_MB:-4} MiB kernel, a ${INITRD_MB:-16} MiB
# initrd, generation 1 of stream "storm"). Raw JSON reports go to
# ${OUT:-benches/notes/results-YYYYMMDD-pair}-{one,pair,split}-RUN.txt.
source "$(dirname "$0")/lib.sh"
need psql curl jq "$IRONBOOT" "$STORM"
[ -n "${IRONBOOT_PG:-}" ] || { echo "IRONBOOT_PG=postgres://… is required (a database the bench may empty)" >&2; exit 2; }
N="${N:-1000}"
KERNEL_MB="${KERNEL_MB:-4}"
INITRD_MB="${INITRD_MB:-16}"
OUT="${OUT:-$BENCH_DIR/notes/results-$(date -u +%Y%m%d)-pair}"
A_IP=127.0.0.1
B_IP=127.0.0.2
STORM_ARGS=(--giaddr 127.77.0.1 --relay-port 67 -n "$N" --restarts 3
    --dhcp-timeouts 4,8,16,32 --http-retry-delay 5 --deadline 600 --json)

reset_db() {
    psql -q "$IRONBOOT_PG" -c "DROP SCHEMA public CASCADE" -c "CREATE SCHEMA public" >/dev/null 2>&1
}
# lib.sh's cleanup stops every process and removes the namespace and
# $WORK; then the database is emptied of what the runs wrote.
pair_cleanup() {
    cleanup
    reset_db || echo "could not empty $IRONBOOT_PG" >&2
}
trap pair_cleanup EXIT

# forget PID: a process already reaped leaves the list cleanup stops.
forget() {
    local p keep=()
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=(${keep[@]+"${keep[@]}"})
}

# node_config DIR IP NAME [PEER]: lib.sh's full-mode config with every
# service on IP (DHCP, TFTP, HTTP; server_ip IP), server_name NAME, and
# standby = true; with PEER, shared = true instead and peer = "PEER" in
# [dhcp] (after its mode = "full").
node_config() {
    local text
    text=$(DHCP_SERVER=$2 ironboot_config "$1" "max_transfers = 4096" |
        sed -e "s|^listen = \"127.0.0.1:8080\"|listen = \"$2:8080\"|" \
            -e "s|^listen = \"127.0.0.1:69\"|listen = \"$2:69\"|")
    # [store] must be the last table for the key appended below.
    [ "$(printf '%s\n' "$text" | grep '^\[' | tail -n1)" = "[store]" ] ||
        { echo "node_config: [store] is not the last table" >&2; return 1; }
    if [ -z "${4:-}" ]; then
        printf 'server_name = "%s"\n%s\nstandby = true\n' "$3" "$text"
        return
    fi
    # peer belongs to [dhcp]: right after its mode = "full", found once.
    [ "$(printf '%s\n' "$text" | grep -c '^mode = "full"$')" = 1 ] ||
        { echo "node_config: no single mode = \"full\" line" >&2; return 1; }
    text=$(printf '%s\n' "$text" | sed -e "/^mode = \"full\"\$/a peer = \"$4\"")
    printf 'server_name = "%s"\n%s\nshared = true\n' "$3" "$text"
}

# healthy IP TRIES: until IP:8080/healthz answers, 50 ms between tries.
# One shell in the namespace, so a try costs a curl, not a netns exec.
healthy() {
    in_ns bash -c 'for _ in $(seq "$2"); do
        curl -fsS -o /dev/null --max-time 2 "http://$1:8080/healthz" 2>/dev/null && exit 0
        sleep 0.05
    done; exit 1' healthy "$1" "$2"
}

# start_node NAME IP [PEER]: data_dir $WORK/NAME; sets LAST_PID.
start_node() {
    local d=$WORK/$1
    rm -rf "$d"; mkdir -p "$d/data" "$d/tftp"
    cp /usr/lib/ipxe/undionly.kpxe "$d/tftp/"
    node_config "$d" "$2" "$1" "${3:-}" >"$d/ironboot.toml"
    IRONBOOT_LOG=warn start "ironboot-$1" "$IRONBOOT" serve --config "$d/ironboot.toml"
}

# artifacts_copied NAME: artifacts (sha256-named files) in NAME's store.
artifacts_copied() {
    ls "$WORK/$1/data/images/artifacts/sha256" 2>/dev/null | grep -cE '^[0-9a-f]{64}$' || true
}

# replies IP: ironboot_dhcp_replies_total on IP:8080/metrics (0 if none).
replies() {
    { in_ns curl -fsS --max-time 2 "http://$1:8080/metrics" 2>/dev/null || true; } |
        awk '$1 == "ironboot_dhcp_replies_total" { n = $2 } END { print n + 0 }'
}

# partner_gone NAME: "HA partner gone" lines in NAME's log so far.
partner_gone() {
    grep -c 'HA partner gone' "$WORK/ironboot-$1.log" 2>/dev/null || true
}

confirmed() {
    psql -Atq "$IRONBOOT_PG" -c "SELECT COUNT(*) FROM boots WHERE state='confirmed'" 2>/dev/null || echo 0
}

# The database's view after a run: bound leases on the storm's subnet,
# distinct addresses, distinct machines (all three equal: one address per
# machine) and machines with a confirmed boot.
db_check() {
    psql -Atq -F' ' "$IRONBOOT_PG" -c "SELECT
        (SELECT COUNT(*) FROM leases WHERE state = 'bound' AND ip LIKE '127.77.%'),
        (SELECT COUNT(DISTINCT ip) FROM leases WHERE state = 'bound' AND ip LIKE '127.77.%'),
        (SELECT COUNT(DISTINCT mac) FROM leases WHERE state = 'bound' AND ip LIKE '127.77.%'),
        (SELECT COUNT(DISTINCT mac) FROM boots WHERE state = 'confirmed')" 2>/dev/null |
        awk '{ printf "db: %s bound leases, %s addresses, %s machines; %s machines confirmed", $1, $2, $3, $4 }'
}

run_one() {
    reset_db
    start_node one "$A_IP"; local pid=$LAST_PID
    healthy "$A_IP" 200 || { echo "the server did not serve; log:" >&2; tail -n 20 "$WORK/ironboot-one.log" >&2; exit 1; }
    import_image "$WORK/one" "$WORK/vmlinuz" "$WORK/initrd.img" >/dev/null
    in_ns "$STORM" "${STORM_ARGS[@]}" --dhcp "$A_IP:67" --server-pid "$pid" >"$WORK/out.json" 2>"$WORK/storm.err" || true
    DB=$(db_check)
    stop "$pid"; forget "$pid"
    FAILOVER=-
}

run_pair() {
    reset_db
    start_node a "$A_IP"; local a=$LAST_PID
    healthy "$A_IP" 200 || { echo "A did not serve; log:" >&2; tail -n 20 "$WORK/ironboot-a.log" >&2; exit 1; }
    start_node b "$B_IP"; local b=$LAST_PID
    import_image "$WORK/a" "$WORK/vmlinuz" "$WORK/initrd.img" >/dev/null
    # B copies A's images every 5 s: both artifacts before the storm (60 s).
    local i
    for i in $(seq 120); do
        [ "$(artifacts_copied b)" -ge 2 ] && break
        kill -0 "$b" 2>/dev/null || { echo "B exited; log:" >&2; tail -n 20 "$WORK/ironboot-b.log" >&2; exit 1; }
        sleep 0.5
    done
    [ "$(artifacts_copied b)" -ge 2 ] || { echo "B did not copy the artifacts in 60 s; log:" >&2; tail -n 20 "$WORK/ironboot-b.log" >&2; exit 1; }
    # A standby serves nothing: B must not answer yet.
    if in_ns curl -fsS -o /dev/null --max-time 1 "http://$B_IP:8080/healthz" 2>/dev/null; then
        echo "B answers /healthz while A serves: not a standby" >&2; exit 1
    fi
    ip netns exec "$NS" "$STORM" "${STORM_ARGS[@]}" --dhcp "$A_IP:67" --also-dhcp "$B_IP:67" \
        --server-pid "$b" >"$WORK/out.json" 2>"$WORK/storm.err" &
    local storm=$!; PIDS+=("$storm")
    # A fifth of the machines confirmed (through A): at most 300 s.
    local want=$((N / 5)) c=0
    for i in $(seq 1500); do
        c=$(confirmed)
        [ "$c" -ge "$want" ] && break
        kill -0 "$storm" 2>/dev/null || break
        sleep 0.2
    done
    if [ "$c" -lt "$want" ]; then
        echo "only $c machines confirmed (wanted $want) before the storm ended or 300 s passed" >&2
        wait "$storm" || true; forget "$storm"; KEEP_WORK=1; exit 1
    fi
    local t0 t1
    t0=$(date +%s.%N)
    kill -9 "$a"
    if healthy "$B_IP" 600; then
        t1=$(date +%s.%N)
        FAILOVER=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    else
        FAILOVER=9999
        echo "B did not serve within 30 s of the kill; log:" >&2; tail -n 20 "$WORK/ironboot-b.log" >&2
    fi
    KILLED_AT=$c
    wait "$a" 2>/dev/null || true; forget "$a"
    wait "$storm" || true; forget "$storm"
    DB=$(db_check)
    stop "$b"; forget "$b"
}

run_split() {
    reset_db
    start_node a "$A_IP" b; local a=$LAST_PID
    healthy "$A_IP" 200 || { echo "A did not serve; log:" >&2; tail -n 20 "$WORK/ironboot-a.log" >&2; exit 1; }
    start_node b "$B_IP" a; local b=$LAST_PID
    healthy "$B_IP" 200 || { echo "B did not serve; log:" >&2; tail -n 20 "$WORK/ironboot-b.log" >&2; exit 1; }
    import_image "$WORK/a" "$WORK/vmlinuz" "$WORK/initrd.img" >/dev/null
    # B copies A's artifacts (shared servers copy each other's): 60 s.
    local i
    for i in $(seq 120); do
        [ "$(artifacts_copied b)" -ge 2 ] && break
        kill -0 "$b" 2>/dev/null || { echo "B exited; log:" >&2; tail -n 20 "$WORK/ironboot-b.log" >&2; exit 1; }
        sleep 0.5
    done
    [ "$(artifacts_copied b)" -ge 2 ] || { echo "B did not copy the artifacts in 60 s; log:" >&2; tail -n 20 "$WORK/ironboot-b.log" >&2; exit 1; }
    # each answers its own half 1.2 s after the other sees it
    sleep 3
    kill -0 "$a" 2>/dev/null || { echo "A exited; log:" >&2; tail -n 20 "$WORK/ironboot-a.log" >&2; exit 1; }
    ip netns exec "$NS" "$STORM" "${STORM_ARGS[@]}" --dhcp "$A_IP:67" --also-dhcp "$B_IP:67" \
        --server-pid "$b" >"$WORK/out.json" 2>"$WORK/storm.err" &
    local storm=$!; PIDS+=("$storm")
    # A fifth of the machines confirmed (through both): at most 300 s.
    local want=$((N / 5)) c=0
    for i in $(seq 1500); do
        c=$(confirmed)
        [ "$c" -ge "$want" ] && break
        kill -0 "$storm" 2>/dev/null || break
        sleep 0.2
    done
    if [ "$c" -lt "$want" ]; then
        echo "only $c machines confirmed (wanted $want) before the storm ended or 300 s passed" >&2
        wait "$storm" || true; forget "$storm"; KEEP_WORK=1; exit 1
    fi
    # the one that answered more dies (A on a tie)
    SPLIT_RA=$(replies "$A_IP"); SPLIT_RB=$(replies "$B_IP")
    local dead=$a survivor=$b sname=b
    KILLED=A
    if [ "$SPLIT_RB" -gt "$SPLIT_RA" ]; then dead=$b survivor=$a sname=a KILLED=B; fi
    # the survivor may have logged "HA partner gone" at start (its partner
    # not started yet): a new line is the one that counts.
    local before t0 t1
    before=$(partner_gone "$sname")
    t0=$(date +%s.%N)
    kill -9 "$dead"
    FAILOVER=9999
    for i in $(seq 600); do
        if [ "$(partner_gone "$sname")" -gt "$before" ]; then
            t1=$(date +%s.%N)
            FAILOVER=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
            break
        fi
        sleep 0.05
    done
    [ "$FAILOVER" != 9999 ] ||
        { echo "the survivor did not log \"HA partner gone\" within 30 s of the kill; log:" >&2; tail -n 20 "$WORK/ironboot-$sname.log" >&2; }
    KILLED_AT=$c
    wait "$dead" 2>/dev/null || true; forget "$dead"
    wait "$storm" || true; forget "$storm"
    DB=$(db_check)
    stop "$survivor"; forget "$survivor"
}

field() { jq -r "$1" "$WORK/out.json"; }

setup_ns
make_file "$WORK/vmlinuz" $((KERNEL_MB << 20))
make_file "$WORK/initrd.img" $((INITRD_MB << 20))
echo "# pair: $N machines, full flow, --restarts 3, kernel ${KERNEL_MB} MiB + initrd ${INITRD_MB} MiB; PostgreSQL $(psql -Atq "$IRONBOOT_PG" -c 'SHOW server_version'), fsync=$(psql -Atq "$IRONBOOT_PG" -c 'SHOW fsync'), synchronous_commit=$(psql -Atq "$IRONBOOT_PG" -c 'SHOW synchronous_commit'); $(machine)"
echo "# ironboot $IRONBOOT; storm $STORM; load $(cut -d' ' -f1-3 /proc/loadavg)"
declare -a ONE_T=() ONE_C=() ONE_R=() ONE_S=() PAIR_T=() PAIR_C=() PAIR_R=() PAIR_S=() PAIR_F=()
declare -a SPLIT_T=() SPLIT_C=() SPLIT_R=() SPLIT_S=() SPLIT_F=()
SUMMARY='"\(.completed)/\(.machines) booted, failed \(.failed), restarted \(.restarted) (\(.restarts) restarts), addresses shared \(.addresses_shared), last boot \(.time_to_last_boot_s) s"'
for r in $(seq "$RUNS"); do
    run_one
    cp "$WORK/out.json" "$OUT-one-$r.txt"
    echo "run $r one server: $(field "$SUMMARY"), server cpu $(field '.server.cpu_s') s, peak RSS $(field '.server.run_peak_rss_mb') MB; $DB; failures: $(field '[.failures[] | "\(.machines) at \(.step)"] | join(", ")'); load $(cut -d' ' -f1-3 /proc/loadavg)"
    ONE_T+=("$(field '.time_to_last_boot_s // 9999')"); ONE_C+=("$(field .completed)")
    ONE_R+=("$(field .restarted)"); ONE_S+=("$(field .addresses_shared)")
    run_pair
    cp "$WORK/out.json" "$OUT-pair-$r.txt"
    echo "run $r pair, A killed at $KILLED_AT confirmed: $(field "$SUMMARY"), failover $FAILOVER s, B cpu $(field '.server.cpu_s') s; $DB; failures: $(field '[.failures[] | "\(.machines) at \(.step)"] | join(", ")'); load $(cut -d' ' -f1-3 /proc/loadavg)"
    PAIR_T+=("$(field '.time_to_last_boot_s // 9999')"); PAIR_C+=("$(field .completed)")
    PAIR_R+=("$(field .restarted)"); PAIR_S+=("$(field .addresses_shared)"); PAIR_F+=("$FAILOVER")
    run_split
    cp "$WORK/out.json" "$OUT-split-$r.txt"
    echo "run $r split pair, $KILLED killed at $KILLED_AT confirmed (DHCP replies so far: A $SPLIT_RA, B $SPLIT_RB): $(field "$SUMMARY"), failover $FAILOVER s (kill to \"HA partner gone\" in the survivor's log), B cpu $(field '.server.cpu_s // "-"') s; $DB; failures: $(field '[.failures[] | "\(.machines) at \(.step)"] | join(", ")'); load $(cut -d' ' -f1-3 /proc/loadavg)"
    SPLIT_T+=("$(field '.time_to_last_boot_s // 9999')"); SPLIT_C+=("$(field .completed)")
    SPLIT_R+=("$(field .restarted)"); SPLIT_S+=("$(field .addresses_shared)"); SPLIT_F+=("$FAILOVER")
done
echo "RESULT pair storm one server (median of $RUNS): last boot $(median "${ONE_T[@]}") s, completed $(median "${ONE_C[@]}")/$N, restarted $(median "${ONE_R[@]}"), addresses shared $(median "${ONE_S[@]}") (max $(printf '%s\n' "${ONE_S[@]}" | sort -g | tail -n1))"
echo "RESULT pair storm primary killed (median of $RUNS): last boot $(median "${PAIR_T[@]}") s, completed $(median "${PAIR_C[@]}")/$N, restarted $(median "${PAIR_R[@]}"), addresses shared $(median "${PAIR_S[@]}") (max $(printf '%s\n' "${PAIR_S[@]}" | sort -g | tail -n1)), failover $(median "${PAIR_F[@]}") s"
echo "RESULT pair storm last boot, pair/one server: $(ratio "$(median "${PAIR_T[@]}")" "$(median "${ONE_T[@]}")")x"
echo "RESULT pair storm split pair killed (median of $RUNS): last boot $(median "${SPLIT_T[@]}") s, completed $(median "${SPLIT_C[@]}")/$N, restarted $(median "${SPLIT_R[@]}"), addresses shared $(median "${SPLIT_S[@]}") (max $(printf '%s\n' "${SPLIT_S[@]}" | sort -g | tail -n1)), failover $(median "${SPLIT_F[@]}") s (kill to \"HA partner gone\" logged)"
echo "RESULT pair storm last boot, split/one server: $(ratio "$(median "${SPLIT_T[@]}")" "$(median "${ONE_T[@]}")")x"
