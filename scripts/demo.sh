#!/usr/bin/env bash
# Sets up what is missing, then runs the main job on its embedded default: replays the bundled sample through
# ingest into the RocksDB store under .state/, embeds the items, runs every job (exports under .state/exports)
# and prints what was stored and produced.
set -euo pipefail
cd "$(dirname "$0")/.."
SAILSTREAM_SKIP_TANSU=${SAILSTREAM_SKIP_TANSU:-1} scripts/setup.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/sailstream/target}
cargo run --locked --quiet -- demo "$@"
