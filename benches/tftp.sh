#!/usr/bin/env bash
# TFTP: $N concurrent transfers of a 1 MiB file (blksize 1468), ironboot with
# and without windowsize 16, tftp-hpa (in.tftpd) and dnsmasq's TFTP, all on
# 127.0.0.1:69, read by ironboot-storm --tftp-only. Aggregate throughput =
# bytes / wall time; medians of $RUNS, servers alternating.
source "$(dirname "$0")/lib.sh"
need in.tftpd dnsmasq jq "$IRONBOOT" "$STORM"
N="${N:-100}"
setup_ns
mkdir -p "$WORK/root"
make_file "$WORK/root/file.bin" $((1 << 20))

start_server() {
    case $1 in
    ironboot*)
        local d=$WORK/ib; rm -rf "$d"; start_ironboot "$d" "max_transfers = 4096"
        cp "$WORK/root/file.bin" "$d/tftp/"; SERVER_PID=$IRONBOOT_PID ;;
    tftp-hpa)
        start tftpd in.tftpd -L -s -a :69 -B 1468 "$WORK/root"; SERVER_PID=$LAST_PID; wait_udp 69 ;;
    dnsmasq)
        start dnsmasq dnsmasq -k -u root --log-facility="$WORK/dnsmasq.syslog" --quiet-tftp --port=0 --enable-tftp --tftp-root="$WORK/root" --tftp-max=4096 --listen-address=127.0.0.1 --bind-interfaces
        SERVER_PID=$LAST_PID; wait_udp 69 ;;
    esac
}

echo "# tftp: $N concurrent transfers of 1 MiB, blksize 1468; $(machine)"
SERVERS="ironboot-w16 ironboot-w1 tftp-hpa dnsmasq"
declare -A MBS
for r in $(seq "$RUNS"); do
    for s in $SERVERS; do
        start_server "$s"
        w=1; [ "$s" = ironboot-w16 ] && w=16
        in_ns "$STORM" --tftp-only file.bin --tftp-server 127.0.0.1:69 -n "$N" --blksize 1468 --windowsize "$w" --json --deadline 300 --server-pid "$SERVER_PID" >"$WORK/out.json" || true
        mbs=$(jq -r '((.steps[0].bytes // 0) / 1048576 / .elapsed_s * 100 | floor) / 100' "$WORK/out.json")
        echo "run $r $s: $(jq -r '"\(.completed)/\(.machines) ok, \(.elapsed_s) s"' "$WORK/out.json"), $mbs MiB/s"
        MBS[$s]="${MBS[$s]:-} $mbs"
        stop "$SERVER_PID"
    done
done
for s in $SERVERS; do
    # shellcheck disable=SC2086
    m=$(median ${MBS[$s]}); echo "RESULT tftp $s: $m MiB/s aggregate (runs:${MBS[$s]})"
    eval "MED_${s//-/_}=$m"
done
echo "RESULT tftp ratios: ironboot windowsize 16 / tftp-hpa $(ratio "$MED_ironboot_w16" "$MED_tftp_hpa")x, ironboot lock-step / tftp-hpa $(ratio "$MED_ironboot_w1" "$MED_tftp_hpa")x, ironboot w16 / dnsmasq $(ratio "$MED_ironboot_w16" "$MED_dnsmasq")x"
