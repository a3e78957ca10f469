#!/usr/bin/env bash
# NBD: read throughput of one root image (default 512 MiB) copied whole
# with libnbd's nbdcopy to null:, from ironboot's export by digest and from
# nbdkit's file plugin on the same file, servers alternating: nbdcopy's
# defaults (large requests, several connections: the export allows
# multi-conn), and 4 KiB requests on one connection (the size dm-verity and
# a page cache ask for: per-request cost). Medians of $RUNS.
source "$(dirname "$0")/lib.sh"
need nbdkit nbdcopy curl "$IRONBOOT"
SIZE_MIB="${SIZE_MIB:-512}"
export IRONBOOT_EXTRA='[nbd]
listen = "127.0.0.1:10809"'

setup_ns
make_file "$WORK/root.img" $((SIZE_MIB << 20))
D=$(sha256sum "$WORK/root.img" | cut -d' ' -f1)

# copy_secs URI [NBDCOPY-ARGS]: seconds for nbdcopy of the whole export to null:.
copy_secs() {
    local t0 t1 uri=$1
    shift
    t0=$(date +%s.%N)
    in_ns nbdcopy "$@" "$uri" null:
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
}

echo "# nbd: nbdcopy of a ${SIZE_MIB} MiB export to null:, ironboot vs nbdkit file plugin; $(machine)"
SMALL=(--request-size=4096 --connections=1 --requests=16)
mibs() { awk -v s="$1" -v m="$SIZE_MIB" 'BEGIN { printf "%.0f", m / s }'; }
declare -a IB=() NK=() IB4=() NK4=()
for r in $(seq "$RUNS"); do
    d=$WORK/ib; rm -rf "$d"; start_ironboot "$d"
    token=$(cat "$d/data/admin.token")
    in_ns curl -fsS -o /dev/null -X PUT -H "Authorization: Bearer $token" --data-binary "@$WORK/root.img" \
        "http://127.0.0.1:8080/api/v1/artifacts/sha256/$D"
    wait_tcp 10809
    IB+=("$(mibs "$(copy_secs "nbd://127.0.0.1:10809/$D")")")
    IB4+=("$(mibs "$(copy_secs "nbd://127.0.0.1:10809/$D" "${SMALL[@]}")")")
    stop "$IRONBOOT_PID"
    start nbdkit nbdkit --foreground --readonly --port 10810 --ipaddr 127.0.0.1 file "$WORK/root.img"
    nk=$LAST_PID; wait_tcp 10810
    NK+=("$(mibs "$(copy_secs "nbd://127.0.0.1:10810/")")")
    NK4+=("$(mibs "$(copy_secs "nbd://127.0.0.1:10810/" "${SMALL[@]}")")")
    stop "$nk"
    echo "run $r: ironboot ${IB[-1]} MiB/s (4 KiB: ${IB4[-1]}), nbdkit ${NK[-1]} MiB/s (4 KiB: ${NK4[-1]})"
done
a=$(median "${IB[@]}"); b=$(median "${NK[@]}")
echo "RESULT nbd copy: ironboot $a MiB/s, nbdkit $b MiB/s; ironboot/nbdkit $(ratio "$a" "$b")x (runs: ${IB[*]} / ${NK[*]})"
a=$(median "${IB4[@]}"); b=$(median "${NK4[@]}")
echo "RESULT nbd 4 KiB requests, 1 connection: ironboot $a MiB/s, nbdkit $b MiB/s; ironboot/nbdkit $(ratio "$a" "$b")x (runs: ${IB4[*]} / ${NK4[*]})"
