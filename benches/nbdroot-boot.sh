#!/usr/bin/env bash
# Two-stage boot: a live OS whose root (SIZE_MIB, default 256, of random
# data in a squashfs) is streamed over NBD and verified with dm-verity,
# against the same root unpacked from an initrd that iPXE loads whole.
# Real VMs under TCG (1 GiB of RAM, SeaBIOS + iPXE ROM) in the e2e lab's
# network namespaces; boots alternate, RUNS of each (default 3); prints
# each boot's seconds from power-on to the confirmation and the medians.
# Root, the e2e test tools (.ci/run installs them), mksquashfs.
#   RUNS=5 SIZE_MIB=256 benches/nbdroot-boot.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export RUNS="${RUNS:-3}" SIZE_MIB="${SIZE_MIB:-256}"
IRONBOOT_E2E=require cargo test --test e2e \
    nbdroot::bench_two_stage_boot_against_the_root_as_an_initrd -- \
    --ignored --nocapture 2>&1 | grep --line-buffered -E '^(bench-nbdroot|test result|thread|panicked)'
