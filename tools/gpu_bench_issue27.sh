#!/usr/bin/env bash
# Issue 27's figures on the lent GPU machine (torch there, no TensorRT, no internet):
#   device: bash tools/gpu_bench_issue27.sh   (about 9 minutes)
# Every figure is a ratio against a baseline of the same run, on the same card.
set -u
P=${PYTHON:-/opt/torch/.venv/bin/python}
[ -x "$P" ] || P=python3
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
D=${BENCH_DIR:-/var/tmp/trtpack-bench}; mkdir -p "$D"
nproc; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$P -c "import torch; print('torch', torch.__version__)"; df -T "$D" /tmp | tail -n +2
# one batch (the session's device time allows one): the most wanted figures first
echo "== cold start, 1 GiB =="; timeout 150 $P tools/bench_cold_start.py --gib 1 --device cuda --repeat 2 --cache both --dir "$D"
echo "== cold start, 4 GiB =="; timeout 150 $P tools/bench_cold_start.py --gib 4 --device cuda --repeat 1 --cache both --dir "$D"
echo "== cold start, BERT =="; timeout 110 $P tools/bench_cold_start.py --model bert --device cuda --repeat 1 --cache both --dir "$D"
echo "== save / verify, 1 GiB =="; timeout 60 $P tools/bench_save_load.py --mb 1024 --repeat 2 --device cuda --dir "$D"
echo "== big graphs =="; timeout 60 $P tools/bench_big_graph.py --nodes 10000 --repeat 1
echo "== inspect =="; timeout 40 $P tools/bench_inspect.py --repeat 9 --gib 1
