#!/usr/bin/env bash
# README command 2: every test. Installs what is missing, downloads the chat model the
# golden tests need (once, into $KVTIER_MODEL_DIR or ~/.cache/kvtier/models), then runs
# the whole workspace's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --locked --workspace --all-targets
# The binary the workspace build just made: `cargo run -p kvtier-bench` would resolve the
# features of that one package and rebuild three crates for nothing.
target_dir=$(cargo metadata --locked --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
"$target_dir/debug/kvtier-bench" fetch-model
cargo test --locked --workspace --all-targets
