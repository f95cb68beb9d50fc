#!/usr/bin/env bash
# Issue 27.4 (CUDA graph replay) and 27.6 (weights hashed while copied to the GPU) on the lent
# GPU machine (torch there, no TensorRT, no internet):
#   device: bash tools/gpu_bench_cuda.sh   (about 7 minutes; with .gpu-wheels carried: cp312
#   wheels of pytest, jsonschema, safetensors, msgpack, transformers and their dependencies)
# 1. the GPU tests of tests/test_cuda_graphs.py and tests/test_staging.py (and their CPU ones);
# 2. tools/bench_cold_start.py --gib 4, warm and cold page cache, the mapped and the staged
#    GPU loads side by side (the floor: safetensors to CUDA);
# 3. tools/bench_decode.py: eager, pack(x), pack with cuda_graphs, torch.compile
#    reduce-overhead, for a bf16 SwiGLU MLP at batch 1 and the Llama decode step.
# The timeouts add up to 490 s.
# Every figure is a ratio against a baseline of the same run, on the same card.
set -u
P=${PYTHON:-/opt/torch/.venv/bin/python}
[ -x "$P" ] || P=python3
export PYTHONPATH=$PWD:/tmp/deps PYTHONUNBUFFERED=1
for m in pytest jsonschema safetensors msgpack transformers; do
  $P -c "import $m" 2>/dev/null || $P -m pip install -q --no-index --find-links .gpu-wheels \
    --target /tmp/deps "$m" >/dev/null 2>&1 || echo "no wheel of $m in .gpu-wheels: its steps fail or skip"
done
D=${BENCH_DIR:-/var/tmp/trtpack-bench}; mkdir -p "$D"
nproc; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$P -c "import torch, sys; print('torch', torch.__version__, 'python', sys.version.split()[0])"
echo "== GPU tests (pytest -m gpu) =="
timeout 100 $P -m pytest -q -p no:cacheprovider -rs -m gpu tests/test_cuda_graphs.py tests/test_staging.py 2>&1 | tail -30
echo "== cold start, 4 GiB, warm and cold page cache: mapped (the default) and staged GPU loads =="
timeout 220 $P tools/bench_cold_start.py --gib 4 --device cuda --repeat 3 --cache both --dir "$D" \
  --variants trtpack_verify,trtpack_noverify,trtpack_staged_verify,trtpack_staged_noverify,floor
echo "== decode-sized calls (each row printed as measured) =="
timeout 170 $P tools/bench_decode.py --calls 300
