#!/usr/bin/env bash
# CUDA check of the embed stage, for a machine with an NVIDIA GPU. Prepared here, run there:
#
#   cargo bench --locked --features cuda --bench embed --no-run        # on the build machine; note the binary
#   scripts/gpu-check.sh PATH/TO/embed-<hash> MODEL_DIR                 # on the GPU machine
#
# It needs ONNX Runtime's CUDA build: PyPI onnxruntime-gpu==1.31.1 (CUDA 13, driver r580+) and the nvidia-* CUDA
# wheels (cublas, cuda-runtime, cufft, curand, cudnn-cu13, nvjitlink), installed with pip. The provider library
# must sit beside libonnxruntime.so, so the script points ORT_DYLIB_PATH into the onnxruntime-gpu package and puts
# the CUDA wheels' lib folders on LD_LIBRARY_PATH. Then it runs the embed benchmark twice, with
# embed.device = "cuda" (fails loudly if the provider cannot load) and "cpu", and prints both tables.
set -euo pipefail
bench=${1:?usage: gpu-check.sh BENCH_BINARY MODEL_DIR}
model=${2:?usage: gpu-check.sh BENCH_BINARY MODEL_DIR}
py=${PYTHON:-python3}

capi=$("$py" -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))')
lib=$(ls "$capi"/libonnxruntime.so.* | head -1)
[[ -f "$capi/libonnxruntime_providers_cuda.so" ]] \
  || { echo "gpu-check: $capi has no libonnxruntime_providers_cuda.so: pip install onnxruntime-gpu==1.31.1" >&2; exit 1; }
cuda_libs=$("$py" - <<'PY'
import glob, os, site
dirs = set()
for root in site.getsitepackages() + [site.getusersitepackages()]:
    for d in glob.glob(os.path.join(root, "nvidia", "*", "lib")):
        dirs.add(d)
print(":".join(sorted(dirs)))
PY
)
export ORT_DYLIB_PATH=$lib LD_LIBRARY_PATH=$cuda_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export SAILSTREAM__EMBED__MODEL_DIR=$model
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
echo "== device = cuda"
SAILSTREAM__EMBED__DEVICE=cuda BENCH_EMBED_TEXT=${BENCH_EMBED_TEXT:-2048} BENCH_EMBED_BATCHES=${BENCH_EMBED_BATCHES:-1,32,128} \
  "$bench" --bench
echo "== device = cpu (same machine)"
SAILSTREAM__EMBED__DEVICE=cpu BENCH_EMBED_BATCHES=${BENCH_EMBED_BATCHES:-1,32,128} "$bench" --bench
