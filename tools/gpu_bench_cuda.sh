#!/usr/bin/env bash
# Issue 27's GPU figures on the lent GPU machine (torch there, no TensorRT, no internet), in
# one batch that stops itself before the device's 600 s limit:
#   device: bash tools/gpu_bench_cuda.sh [seconds, default 570]   (with .gpu-wheels carried:
#   cp312 wheels of pytest, jsonschema, msgpack and their dependencies)
# Steps, most wanted first; a step that no longer fits the time left is skipped and says so:
#  1. the GPU tests of tests/test_cuda_graphs.py and tests/test_staging.py;
#  2. tools/bench_decode.py: eager, pack(x), pack with cuda_graphs, torch.compile
#     reduce-overhead, for a bf16 SwiGLU MLP at batch 1 and the Llama decode step (27.4);
#  3. tools/bench_cold_start.py --gib 4, warm and cold page cache, the mapped and the staged
#     GPU loads side by side against the floor (safetensors to CUDA) (27.6);
#  4. the same for BERT and a 3.1 GiB Llama against the floor and torch.export.load (27.2),
#     and tools/profile_load.py of the BERT pack;
#  5. tools/bench_save_load.py --save-only at 4 GiB (27.3);
#  6. tools/bench_entry_points.py --device cuda at 141 M and 735 M parameters, and
#     tools/profile_load.py --stages of the 735 M packs (27.5).
# Every figure is a ratio against a baseline of the same run, on the same card.
set -u
P=${PYTHON:-/opt/torch/.venv/bin/python}
[ -x "$P" ] || P=python3
END=$(( $(date +%s) + ${1:-570} ))
export PYTHONPATH=$PWD:/tmp/deps PYTHONUNBUFFERED=1
for m in pytest jsonschema safetensors msgpack transformers; do
  $P -c "import $m" 2>/dev/null || $P -m pip install -q --no-index --find-links .gpu-wheels \
    --target /tmp/deps "$m" >/dev/null 2>&1 || echo "no wheel of $m in .gpu-wheels: its steps fail or skip"
done
D=${BENCH_DIR:-/var/tmp/trtpack-bench}; mkdir -p "$D"
nproc; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$P -c "import torch, sys; print('torch', torch.__version__, 'python', sys.version.split()[0])"
# step TITLE MAX_SECONDS COMMAND...: runs COMMAND under a timeout of MAX_SECONDS or the time
# left, whichever is less; skipped when under 40 s are left
step() {
  local title=$1 max=$2; shift 2
  local left=$(( END - $(date +%s) ))
  if [ "$left" -lt 40 ]; then echo "== $title: skipped ($left s left)"; return; fi
  [ "$left" -lt "$max" ] && max=$left
  echo "== $title (up to $max s)"; local t0=$(date +%s)
  timeout "$max" "$@"; echo "   (rc $?, $(( $(date +%s) - t0 )) s)"
}
step "GPU tests (pytest -m gpu)" 90 $P -m pytest -q -p no:cacheprovider -rs -m gpu \
  tests/test_cuda_graphs.py tests/test_staging.py
step "decode-sized calls" 150 $P tools/bench_decode.py --calls 200
step "cold start, 4 GiB MLP, mapped and staged GPU loads" 170 $P tools/bench_cold_start.py \
  --gib 4 --device cuda --repeat 2 --cache both --dir "$D" \
  --variants trtpack_verify,trtpack_noverify,trtpack_staged_verify,trtpack_staged_noverify,floor
step "cold start, BERT" 110 $P tools/bench_cold_start.py --model bert --device cuda --repeat 2 \
  --cache warm --dir "$D" --keep \
  --variants trtpack_verify,trtpack_noverify,trtpack_staged_verify,floor,torch_export
bert=$(ls -td "$D"/tmp*/ 2>/dev/null | head -1)
[ -n "$bert" ] && step "profile of the BERT load" 40 $P tools/profile_load.py "$bert/model.trtpack" \
  --device cuda --top 25
step "cold start, Llama 3.1 GiB" 150 $P tools/bench_cold_start.py --model llama --device cuda \
  --repeat 2 --cache warm --dir "$D" \
  --variants trtpack_verify,trtpack_noverify,trtpack_staged_verify,floor,torch_export
step "save, 4 GiB" 100 $P tools/bench_save_load.py --mb 4096 --repeat 3 --save-only --dir "$D"
step "several entry points, one load" 80 $P tools/bench_entry_points.py --device cuda \
  --hidden 1024 --layers 8 --vocab 32000
step "several entry points, one load, 735 M" 130 $P tools/bench_entry_points.py --device cuda \
  --hidden 2048 --layers 16 --vocab 32000 --keep "$D/ep"
for pack in prefill llm prefill llm; do  # where the second entry point's time goes
  [ -f "$D/ep/$pack.trtpack" ] && step "stages of $pack.trtpack" 30 $P tools/profile_load.py \
    "$D/ep/$pack.trtpack" --device cuda --stages
done
rm -rf "$D"
