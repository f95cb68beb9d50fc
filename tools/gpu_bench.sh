#!/usr/bin/env bash
# Issue 13's figures on the lent GPU machine (torch there, no TensorRT, no internet):
#   device: bash tools/gpu_bench.sh   (with .gpu-wheels carried: cp312 wheels of the deps)
# Prints each tool's output; every figure is a ratio against a baseline of the same run.
set -u
P=${PYTHON:-/opt/torch/.venv/bin/python}
$P -m pip install -q --no-index --find-links .gpu-wheels --target /tmp/deps \
    safetensors msgpack >/dev/null 2>&1 || echo "pip install of the wheels failed"
export PYTHONPATH=$PWD:/tmp/deps
nproc; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
$P -c "import torch; print('torch', torch.__version__)"
echo "== inspect =="; $P tools/bench_inspect.py --repeat 41 --gib 1
echo "== save / verify, 1 GiB =="; $P tools/bench_save_load.py --mb 1024 --repeat 3 --device cuda
echo "== cold start, 1 GiB =="; $P tools/bench_cold_start.py --gib 1 --device cuda --repeat 3
echo "== cold start, 4 GiB =="; $P tools/bench_cold_start.py --gib 4 --device cuda --repeat 3
echo "== per-call check =="; $P tools/bench_contract.py
