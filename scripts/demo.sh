#!/usr/bin/env bash
# README command 1: the multi-turn chat demo on an embedded single-node kvtierd.
# Installs what is missing, builds, downloads SmolLM2-135M-Instruct on first use, and
# replays real conversations, printing TTFT with the cache against recomputing.
# Extra arguments go to `kvtier-bench chat` (see `--help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --locked -p kvtier-bench
exec cargo run --locked -q -p kvtier-bench -- chat --json chat.json "$@"
