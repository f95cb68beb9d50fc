#!/usr/bin/env bash
# Set everything up, then lint and run the whole test suite, in two environments:
#   .venv      torch 2.13 (CPU): everything but the torch_tensorrt and vision tests
#   .venv-trt  torch 2.14.1 + torch-tensorrt-rtx, torchvision, timm: the tests marked
#              torch_tensorrt or vision
# Extra arguments go to both pytest runs.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
tools/setup.sh trt
.venv/bin/ruff check trtpack tests tools
.venv/bin/ruff format --check trtpack tests tools
.venv/bin/mypy  # type-checks trtpack/ ([tool.mypy] in pyproject.toml)
.venv/bin/python -m pytest -m "not torch_tensorrt and not vision" "$@"
.venv-trt/bin/python -m pytest -m "torch_tensorrt or vision" "$@"
