#!/usr/bin/env bash
# Instruction counts of ironboot's DHCP and TFTP hot paths under
# valgrind --tool=callgrind: exact and repeatable, unlike timings on a shared
# machine (perf has no hardware counters in this VM).
#
# The server runs under callgrind in the server namespace; after a warm-up
# the counters are zeroed (callgrind_control -z PID), a fixed load is sent,
# the ledger writer is given a second to commit, and the counters are dumped
# (callgrind_control --dump PID): each dump holds exactly that load, every
# thread included (packet loop, ledger writer, SQLite). Kernel time is not
# counted: callgrind sees user space only.
#
#   dhcp-new:   $EXCHANGES DORA exchanges from perfdhcp (relayed through the
#               veth, -R $CLIENTS: nearly every client new, so each one is an
#               address allocation and a lease write)
#   dhcp-known: $EXCHANGES exchanges from 100 clients that hold leases
#   tftp-w16:   $TFTP_N transfers of 1 MiB, blksize 1468, windowsize 16
#   tftp-w1:    the same, lock-step
#
# Output: $OUT/<case>.callgrind (the dump) and $OUT/<case>.txt
# (callgrind_annotate, exclusive and inclusive), plus a summary on stdout
# (instructions per exchange / per block).
source "$(dirname "$0")/lib.sh"
need valgrind callgrind_control callgrind_annotate perfdhcp "$IRONBOOT" "$STORM"
CASES="${CASES:-dhcp-new dhcp-known tftp-w16 tftp-w1}"
EXCHANGES="${EXCHANGES:-2000}"
DHCP_RATE="${DHCP_RATE:-100}"
CLIENTS="${CLIENTS:-20000}"
TFTP_N="${TFTP_N:-8}"
OUT="${OUT:-$BENCH_DIR/notes/callgrind}"
mkdir -p "$OUT"
setup_ns
setup_relay_ns

# start_cg: ironboot serve under callgrind (collection on from the start; the
# window is cut by zero/dump). Sets CG_PID; waits up to 120 s for HTTP.
start_cg() {
    local d=$WORK/cg
    rm -rf "$d"; mkdir -p "$d/data" "$d/tftp"
    ironboot_config "$d" "max_transfers = 4096" >"$d/ironboot.toml"
    make_file "$d/tftp/file.bin" $((1 << 20))
    IRONBOOT_LOG=warn start ironboot-cg valgrind --tool=callgrind --compress-strings=no --compress-pos=no --callgrind-out-file="$d/callgrind.out" \
        "$IRONBOOT" serve --config "$d/ironboot.toml"
    CG_PID=$LAST_PID
    for _ in $(seq 600); do
        in_ns bash -c "exec 3<>/dev/tcp/127.0.0.1/8080" 2>/dev/null && return 0
        sleep 0.2
    done
    echo "ironboot under callgrind did not start; log:" >&2; tail -n 20 "$WORK/ironboot-cg.log" >&2; return 1
}

# window NAME CMD...: zero the counters, run CMD (its output kept in
# $OUT/NAME.load.txt), wait for the ledger, dump; prints the instructions.
window() {
    local name=$1 dump="" before; shift
    callgrind_control -z "$CG_PID" >/dev/null
    "$@" >"$OUT/$name.load.txt" 2>&1 || true
    sleep 1
    before=$(find "$WORK/cg" -name 'callgrind.out.*' | wc -l)
    callgrind_control --dump="$name" "$CG_PID" >/dev/null
    for _ in $(seq 300); do
        if [ "$(find "$WORK/cg" -name 'callgrind.out.*' | wc -l)" -gt "$before" ]; then
            sleep 0.5   # let valgrind finish writing it
            dump=$(ls -t "$WORK"/cg/callgrind.out.* | head -1)
            break
        fi
        sleep 0.1
    done
    [ -n "$dump" ] || { echo "no callgrind dump for $name" >&2; return 1; }
    cp "$dump" "$OUT/$name.callgrind"
    {
        echo "## exclusive"
        callgrind_annotate --threshold=100 "$OUT/$name.callgrind" | head -80
        echo "## inclusive"
        callgrind_annotate --inclusive=yes --threshold=100 "$OUT/$name.callgrind" | head -100
    } >"$OUT/$name.txt"
    awk '/^summary:/ {print $2}' "$OUT/$name.callgrind"
}

pdhcp() { # RATE N CLIENTS
    ip netns exec "$PERF_NS" timeout 300 perfdhcp -4 -l "$DHCP_GIADDR" -L 67 -r "$1" -n "$2" -R "$3" -W 3000000 "$DHCP_SERVER"
}

# perf_counts FILE: "exchanges packets drops" from perfdhcp's output:
# completed DORA exchanges (ACKs), requests the server answered, drops.
perf_counts() {
    awk '/^\*\*\*Statistics for: DISCOVER-OFFER/ { ex = "do" } /^\*\*\*Statistics for: REQUEST-ACK/ { ex = "ra" }
         /^received packets:/ { rx += $3; if (ex == "ra") acks = $3 } /^drops:/ { d += $2 }
         END { print acks + 0, rx + 0, d + 0 }' "$1"
}

echo "# callgrind: $(valgrind --version), cases: $CASES; $(machine)"
start_cg
for c in $CASES; do
    case $c in
    dhcp-new)
        pdhcp 50 100 100 >/dev/null 2>&1 || true   # warm-up: first-use paths out of the window
        ir=$(window "$c" pdhcp "$DHCP_RATE" "$EXCHANGES" "$CLIENTS")
        read -r acks rx drops < <(perf_counts "$OUT/$c.load.txt")
        echo "$c: $ir instructions, $acks exchanges ($rx requests answered, $drops drops): $((ir / (acks > 0 ? acks : 1))) per exchange" ;;
    dhcp-known)
        pdhcp 50 300 100 >/dev/null 2>&1 || true   # the 100 clients hold leases
        ir=$(window "$c" pdhcp "$DHCP_RATE" "$EXCHANGES" 100)
        read -r acks rx drops < <(perf_counts "$OUT/$c.load.txt")
        echo "$c: $ir instructions, $acks exchanges ($rx requests answered, $drops drops): $((ir / (acks > 0 ? acks : 1))) per exchange" ;;
    tftp-w16 | tftp-w1)
        w=${c#tftp-w}
        in_ns "$STORM" --tftp-only file.bin --tftp-server 127.0.0.1:69 -n 1 --blksize 1468 --windowsize "$w" --deadline 120 >/dev/null 2>&1 || true
        ir=$(window "$c" in_ns "$STORM" --tftp-only file.bin --tftp-server 127.0.0.1:69 -n "$TFTP_N" \
            --blksize 1468 --windowsize "$w" --deadline 600)
        blocks=$((TFTP_N * ((1 << 20) / 1468 + 1)))
        echo "$c: $ir instructions, $TFTP_N transfers, $blocks blocks: $((ir / blocks)) per block ($(grep -m1 -E 'completed|ok' "$OUT/$c.load.txt" || true))" ;;
    esac
done
stop "$CG_PID"
