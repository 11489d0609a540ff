#!/usr/bin/env bash
# Sets up what is missing, then runs every test (unit, and integration/ against a real Tansu broker, real
# RocksDB and the real ONNX Runtime library).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# A persistent target directory outside the clone is only a cache: a fresh machine builds from scratch.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/sailstream/target}
cargo test --locked --all-targets "$@"
