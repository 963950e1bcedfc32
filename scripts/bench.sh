#!/usr/bin/env bash
# Every benchmark of the README's Performance section, each beside its baseline in the
# same run: tiers (fio, memcpy), io (redis-server, loopback TCP), trace (LRU, Belady),
# filechat and chat (recomputing). Tables go to the terminal; JSON files and PNG plots
# to the folder given (default bench-results/). Takes about half an hour on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench-results}"
mkdir -p "$out"
bash scripts/setup.sh
cargo build --locked -p kvtier-bench
bench() { cargo run --locked -q -p kvtier-bench -- "$@"; }
for workload in tiers io trace filechat chat; do
    echo "== kvtier-bench $workload"
    bench "$workload" --json "$out/$workload.json"
done
