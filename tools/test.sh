#!/usr/bin/env bash
# Set everything up, then lint and run the whole test suite, in two environments:
#   .venv      torch 2.13 (CPU): everything but the torch_tensorrt and vision tests
#   .venv-trt  torch 2.14.1 + torch-tensorrt-rtx, torchvision, timm: the tests marked
#              torch_tensorrt or vision
# Extra arguments go to both pytest runs. A run that selects no test (pytest's exit status 5:
# a -k or a path only the other environment's tests match) is fine when arguments were given,
# as long as one of the two runs selected something; with no arguments it is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
tools/setup.sh trt
.venv/bin/ruff check trtpack tests tools
.venv/bin/ruff format --check trtpack tests tools
.venv/bin/mypy  # type-checks trtpack/ ([tool.mypy] in pyproject.toml)
selected=0
run_pytest() {
  local status=0
  "$@" || status=$?
  if [ "$status" = 5 ] && [ "$NARGS" -gt 0 ]; then
    echo "(no test selected by these arguments in ${1%%/bin/*}: fine, the other run may)" >&2
    return 0
  fi
  [ "$status" = 0 ] && selected=$((selected + 1))
  return "$status"
}
NARGS=$#
run_pytest .venv/bin/python -m pytest -m "not torch_tensorrt and not vision" "$@"
run_pytest .venv-trt/bin/python -m pytest -m "torch_tensorrt or vision" "$@"
if [ "$selected" = 0 ]; then
  echo "no test selected in either environment by: $*" >&2
  exit 5
fi
