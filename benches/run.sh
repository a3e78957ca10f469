#!/usr/bin/env bash
# Runs every benchmark (or those named: dhcp tftp http storm scale nbd) and keeps
# the output under benches/notes/. Needs root, a release build
# (cargo build --release), and the peers: apt-get install kea-dhcp4-server
# kea-admin dnsmasq tftpd-hpa nginx wrk sqlite3 jq curl nbdkit libnbd-bin.
set -euo pipefail
cd "$(dirname "$0")"
out="notes/results-$(date -u +%Y%m%dT%H%M%SZ).txt"
for b in "${@:-dhcp tftp http storm scale nbd}"; do
    for one in $b; do
        echo "== $one" | tee -a "$out"
        ./"$one".sh 2>&1 | tee -a "$out" || echo "$one: FAILED (see above)" | tee -a "$out"
    done
done
echo "results in benches/$out"
