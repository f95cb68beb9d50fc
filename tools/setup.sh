#!/usr/bin/env bash
# Set up a virtual environment, idempotently (returns at once when pyproject.toml and this
# script are unchanged since its last successful run).
#
#   tools/setup.sh        .venv      torch 2.13 (CPU), trtpack (editable), TensorRT-RTX, test
#                                    tools, MLflow, tritonclient, oras; Debian's docker-registry
#                                    (a real OCI registry for the tests) where apt can install it
#   tools/setup.sh trt    .venv-trt  torch 2.14.1 + torch-tensorrt-rtx 2.14.0 (the real
#                                    torch_tensorrt code, built for TensorRT-RTX), test extras,
#                                    torchvision + timm (the vision part of the model corpus)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1
case "${1:-core}" in
  core) VENV=.venv; TORCH=(torch==2.13.0); EXTRAS=torch,test,rtx,mlflow,triton,oci,corpus; MORE=() ;;
  # torchvision/timm live here: PyPI's torchvision builds match this env's CUDA torch, while
  # the CPU torch 2.13 of .venv has no matching torchvision wheel on these machines
  trt)  VENV=.venv-trt; TORCH=(torch==2.14.1); EXTRAS=torch,test,rtx
        MORE=(torch-tensorrt-rtx==2.14.0 torchvision==0.29.1 timm==1.0.31) ;;
  *) echo "usage: tools/setup.sh [core|trt]" >&2; exit 2 ;;
esac
stamp="$VENV/.setup-stamp"
want=$(cat pyproject.toml tools/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setting up $VENV (first run: one to two minutes)" >&2
"$PY" -m venv "$VENV"
quiet() { "$@" 2>&1 | grep -v "^WARNING: Location" >&2 || true; }
# torch first and pinned: on the project's machines these are local wheels.
quiet "$VENV/bin/pip" install -q "${TORCH[@]}"
quiet "$VENV/bin/pip" install -q -e ".[$EXTRAS]" "${MORE[@]}"
"$VENV/bin/python" -c "import torch, trtpack, tensorrt_rtx, pytest, openapi_spec_validator" \
  || { echo "setup of $VENV failed: see the pip output above" >&2; exit 1; }
if [ "$VENV" = .venv ] && ! command -v docker-registry >/dev/null && [ -z "${TRTPACK_NO_APT:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian's docker-registry with apt (a local OCI registry for the OCI tests;" \
         "TRTPACK_NO_APT=1 skips it)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry) \
      >/dev/null 2>&1 || echo "could not install docker-registry: the OCI tests will skip" >&2
  else
    echo "docker-registry is not installed (apt-get install docker-registry): the OCI tests will skip" >&2
  fi
fi
echo "$want" > "$stamp"
