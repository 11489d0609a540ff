#!/usr/bin/env bash
# Installs what sailstream needs and is missing, nothing else. Idempotent: a second run takes seconds.
#
#   apt packages   libclang-dev (bindgen for the vendored RocksDB build); python3-torch, python3-venv (model export);
#                  redis-server (the serving benchmark's floor: a Redis GET of the same bytes; not started here)
#   ONNX Runtime   libonnxruntime.so from the PyPI wheel, into $SAILSTREAM_HOME/onnxruntime-<version>
#   Tansu broker   Kafka-wire-compatible broker for tests and `--kafka` runs, `cargo install`ed into
#                  $SAILSTREAM_TANSU_ROOT (~20 min of CPU the first time on 2 cores)
#   sail-lite      the default embedding model, built from packaged weights by models/sail-lite/build.sh into
#                  $SAILSTREAM_HOME/models/sail-lite-<version> (~5-8 min the first time)
#   MovieLens-100k from the PyPI `recbole` wheel (2 MB), converted by scripts/movielens.py into
#                  $SAILSTREAM_HOME/data/ml-100k/{items,behaviours}.jsonl (backfill test and benchmark; never
#                  committed: MovieLens terms forbid redistribution)
#
# Environment: SAILSTREAM_HOME (default ~/.local/share/sailstream), SAILSTREAM_TANSU_ROOT (default ~/.local/tansu),
# SAILSTREAM_SKIP_TANSU=1 to skip the broker (the demo does not need it; the tests do), SAILSTREAM_RUNTIME_ONLY=1
# for what a deployment runs (apt packages, ONNX Runtime, the model; no broker, test data or benchmark peers):
# the Dockerfile uses it.
set -euo pipefail

ORT_VERSION=1.31.1
TANSU_VERSION=0.6.0
SAILSTREAM_HOME=${SAILSTREAM_HOME:-$HOME/.local/share/sailstream}
TANSU_ROOT=${SAILSTREAM_TANSU_ROOT:-$HOME/.local/tansu}
APT_PACKAGES=(libclang-dev python3-torch python3-venv)
[[ ${SAILSTREAM_RUNTIME_ONLY:-0} == 1 ]] || APT_PACKAGES+=(redis-server)

step() { printf '==> %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# --- apt packages --------------------------------------------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  step "installing apt packages: ${missing[*]}"
  if [[ $(id -u) -eq 0 ]]; then SUDO=(); elif command -v sudo >/dev/null; then SUDO=(sudo); else
    die "need root (or sudo) to apt-get install ${missing[*]}"; fi
  "${SUDO[@]}" apt-get update -qq || die "apt-get update failed; check the Debian mirror is reachable"
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
else
  step "apt packages present: ${APT_PACKAGES[*]}"
fi

# --- toolchain -----------------------------------------------------------------------------------------------
command -v cargo >/dev/null || die "cargo not found: install Rust 1.95+ with rustup"
command -v python3 >/dev/null || die "python3 not found (needed to fetch the ONNX Runtime wheel): apt-get install python3-pip"

# --- ONNX Runtime ---------------------------------------------------------------------------------------------
ort_dir="$SAILSTREAM_HOME/onnxruntime-$ORT_VERSION"
ort_lib="$ort_dir/libonnxruntime.so.$ORT_VERSION"
if [[ -f "$ort_dir/.complete" && -f "$ort_lib" ]]; then
  step "ONNX Runtime $ORT_VERSION present: $ort_lib"
else
  step "installing ONNX Runtime $ORT_VERSION from the PyPI wheel into $ort_dir"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
      --python-version 3.11 -d "$tmp" "onnxruntime==$ORT_VERSION" \
    || die "pip could not download onnxruntime==$ORT_VERSION (is PyPI reachable?)"
  mkdir -p "$ort_dir"
  python3 - "$tmp" "$ort_dir" "$ORT_VERSION" <<'PY' || die "extracting the ONNX Runtime library failed"
import glob, os, shutil, sys, zipfile
src, dest, version = sys.argv[1:]
wheels = glob.glob(os.path.join(src, "onnxruntime-*.whl"))
assert len(wheels) == 1, wheels
wanted = {f"libonnxruntime.so.{version}", "libonnxruntime_providers_shared.so"}
with zipfile.ZipFile(wheels[0]) as z:
    found = [n for n in z.namelist() if n.startswith("onnxruntime/capi/") and os.path.basename(n) in wanted]
    assert {os.path.basename(n) for n in found} == wanted, f"wheel lacks {wanted}: {found}"
    for name in found:
        with z.open(name) as f, open(os.path.join(dest, os.path.basename(name)), "wb") as out:
            shutil.copyfileobj(f, out)
PY
  ln -sf "libonnxruntime.so.$ORT_VERSION" "$ort_dir/libonnxruntime.so"
  touch "$ort_dir/.complete"
fi

# --- Tansu broker ---------------------------------------------------------------------------------------------
tansu="$TANSU_ROOT/bin/tansu"
if [[ ${SAILSTREAM_SKIP_TANSU:-0} == 1 || ${SAILSTREAM_RUNTIME_ONLY:-0} == 1 ]]; then
  step "skipping the Tansu broker"
elif [[ -x "$tansu" && -f "$TANSU_ROOT/.sailstream-tansu-$TANSU_VERSION" ]]; then
  step "Tansu $TANSU_VERSION present: $tansu"
else
  step "building the Tansu $TANSU_VERSION broker (cargo install, SQLite engine; ~20 min once)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql --root "$TANSU_ROOT" \
    || die "cargo install tansu failed (see above); crates.io must be reachable"
  touch "$TANSU_ROOT/.sailstream-tansu-$TANSU_VERSION"
fi

# --- default embedding model ----------------------------------------------------------------------------------
SAILSTREAM_HOME="$SAILSTREAM_HOME" "$(dirname "$0")/../models/sail-lite/build.sh" || die "building the sail-lite model failed"

if [[ ${SAILSTREAM_RUNTIME_ONLY:-0} == 1 ]]; then
  step "set-up complete (runtime only)"
  exit 0
fi

# --- test helpers ---------------------------------------------------------------------------------------------
# PyYAML parses docker-compose.yml in the deployment test (integration/cli.rs); Debian's python3 usually has it.
if ! python3 -c 'import yaml' 2>/dev/null; then
  step "installing PyYAML (deployment test)"
  python3 -m pip install -q --user pyyaml || die "pip could not install pyyaml"
fi

# --- MovieLens-100k sample ------------------------------------------------------------------------------------
RECBOLE_VERSION=1.2.1
ml_dir="$SAILSTREAM_HOME/data/ml-100k"
ml_stamp="$ml_dir/.complete-recbole-$RECBOLE_VERSION-$(sha256sum "$(dirname "$0")/movielens.py" | cut -c1-12)"
if [[ -f "$ml_stamp" ]]; then
  step "MovieLens-100k present: $ml_dir"
else
  step "fetching MovieLens-100k (recbole $RECBOLE_VERSION wheel) into $ml_dir"
  ml_tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$ml_tmp" "recbole==$RECBOLE_VERSION" \
    || die "pip could not download recbole==$RECBOLE_VERSION (is PyPI reachable?)"
  rm -f "$ml_dir"/.complete-*
  python3 "$(dirname "$0")/movielens.py" "$ml_tmp"/recbole-*.whl "$ml_dir" || die "converting MovieLens-100k failed"
  rm -rf "$ml_tmp"
  touch "$ml_stamp"
fi

# --- benchmark peers ------------------------------------------------------------------------------------------
# DuckDB for benches/jobs.rs (the same job SQL on the same Parquet). Small (one wheel); only benchmarks use it.
bench_venv="$SAILSTREAM_HOME/bench-venv"
DUCKDB_VERSION=2.0.0
if [[ -f "$bench_venv/.complete-duckdb-$DUCKDB_VERSION" ]]; then
  step "benchmark venv present: $bench_venv"
else
  step "creating the benchmark venv (duckdb $DUCKDB_VERSION) in $bench_venv"
  python3 -m venv "$bench_venv" || die "python3 -m venv failed (apt-get install python3-venv)"
  "$bench_venv/bin/pip" install -q "duckdb==$DUCKDB_VERSION" || die "pip could not install duckdb==$DUCKDB_VERSION"
  touch "$bench_venv/.complete-duckdb-$DUCKDB_VERSION"
fi

step "set-up complete"
