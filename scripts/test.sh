#!/usr/bin/env bash
# README command 2: every test. Installs what is missing, downloads the chat model the
# golden tests need (once, into $KVTIER_MODEL_DIR or ~/.cache/kvtier/models), then runs
# the whole workspace's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --locked --workspace --all-targets
cargo run --locked -q -p kvtier-bench -- fetch-model
cargo test --locked --workspace --all-targets
