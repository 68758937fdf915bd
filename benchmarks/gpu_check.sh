#!/usr/bin/env bash
# One prepared GPU session: the gpu-marked tests, then ConvexNMF at scale and against
# overcomplete on the GPU. Run from the repository root on a CUDA machine whose Python
# already has torch, timm, einops, tqdm and safetensors; overcomplete 0.3.0 is installed
# from a wheel in .whl/ if present. Results go to $OUT (or benchmarks/results/).
set -uo pipefail
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu -W ignore::DeprecationWarning \
  tests/test_convex_nmf_api.py 2>&1 | tee "$OUT/gpu_tests.log"
timeout "${SCALE_TIMEOUT:-150}" python3 benchmarks/bench_convex_nmf.py scale --device cuda \
  --threads 8 --sizes ${SCALE_SIZES:-1000000} --iters 20 --out "$OUT/convex_nmf_scale_cuda.json" \
  2>&1 | tee "$OUT/scale_cuda.log"
timeout "${COMPARE_TIMEOUT:-90}" python3 benchmarks/bench_convex_nmf.py compare --device cuda \
  --threads 8 --sizes 16000 --wall-n 16000 --budget 3 --out "$OUT/convex_nmf_compare_cuda.json" \
  2>&1 | tee "$OUT/compare_cuda.log"
