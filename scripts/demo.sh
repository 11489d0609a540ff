#!/usr/bin/env bash
# The README's main command. Sets up what is missing (no broker: the demo replays files), then tells the whole
# story on MovieLens-100k (converted from the recbole wheel by the set-up script): backfill the ratings and movies
# through ingest into the RocksDB store under .state/movielens/, embed every movie with sail-lite, run every job,
# print the store, teacher targets, semantic IDs, interests and the quality table, start the lookup API and print
# what a ranker gets from it. Extra arguments go to `sailstream demo` (e.g. --keep-serving).
set -euo pipefail
cd "$(dirname "$0")/.."
SAILSTREAM_SKIP_TANSU=${SAILSTREAM_SKIP_TANSU:-1} scripts/setup.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/sailstream/target}
data="${SAILSTREAM_HOME:-$HOME/.local/share/sailstream}/data/ml-100k"
cargo run --locked --quiet -- --config pipelines/movielens.toml demo --events "$data" "$@"
