#!/usr/bin/env bash
# Every benchmark of the README's Performance section, each beside its baseline in the
# same run: tiers (fio, memcpy), io (redis-server, loopback TCP), trace (LRU, Belady),
# codecs (uncompressed KV), filechat, chat and serve (recomputing), and io --cluster (a
# three-member cluster beside one node). Tables go to the
# terminal; JSON files and PNG plots to the folder given (default bench-results/).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench-results}"
mkdir -p "$out"
bash scripts/setup.sh
cargo build --locked -p kvtier-bench
bench() { cargo run --locked -q -p kvtier-bench -- "$@"; }
for workload in tiers io trace codecs filechat chat serve; do
    echo "== kvtier-bench $workload"
    bench "$workload" --json "$out/$workload.json"
done
echo "== kvtier-bench io --cluster"
bench io --cluster --no-redis --sizes 256KiB,1MiB,4MiB --concurrency 1,4 \
    --json "$out/io-cluster.json"
