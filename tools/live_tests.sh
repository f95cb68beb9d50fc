#!/usr/bin/env bash
# The live engine tests (marked `engine`): they run real TensorRT engines, so they need a
# machine with an NVIDIA GPU that TensorRT-RTX runs engines on (compute capability 7.5, 8.0,
# 8.6, 8.9 or 12.x: an RTX 20xx-50xx, A100, A10/L4/L40; not an H100/H200, which is 9.0) and
# network access for the first setup. CI machines have no GPU: there these tests skip with
# a reason naming this script (docs/testing.md).
#
#   tools/live_tests.sh             .venv-trt (CUDA torch 2.14.1, torch-tensorrt-rtx 2.14.0,
#                                   tensorrt_rtx): tests/test_build.py, test_run.py,
#                                   test_described.py, test_torch_tensorrt.py live tests
#   TRTPACK_LIVE_TENSORRT=1 tools/live_tests.sh
#                                   also installs the standard TensorRT builder and lean
#                                   runtime (tensorrt, tensorrt-lean) for
#                                   test_engines.py::test_lean_runtime_runs_a_version_compatible_engine
#
# TRTPACK_LIVE=1 makes any skip of an engine test a failure (tests/conftest.py): on this
# machine "written and skipped" is not an outcome. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh trt
if [ -n "${TRTPACK_LIVE_TENSORRT:-}" ]; then
  .venv-trt/bin/pip install -q tensorrt tensorrt-lean
else
  set -- --deselect tests/test_engines.py::test_lean_runtime_runs_a_version_compatible_engine "$@"
fi
export TRTPACK_LIVE=1
exec .venv-trt/bin/python -m pytest -m engine -p no:cacheprovider "$@"
