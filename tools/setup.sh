#!/usr/bin/env bash
# Set up a virtual environment, idempotently (returns at once when pyproject.toml and this
# script are unchanged since its last successful run).
#
#   tools/setup.sh        .venv      torch 2.13 (CPU), trtpack (editable), TensorRT-RTX, test
#                                    tools, MLflow, tritonclient, oras; Debian's docker-registry
#                                    (a real OCI registry for the tests), installed with apt when
#                                    run as root, required either way
#   tools/setup.sh trt    .venv-trt  torch 2.14.1 + torch-tensorrt-rtx 2.14.0 (the real
#                                    torch_tensorrt code, built for TensorRT-RTX), test extras,
#                                    torchvision + timm (the vision part of the model corpus)
# It fails when any install fails or anything the tests use does not import or run, and
# writes the stamp only for a complete environment (docs/testing.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1
case "${1:-core}" in
  core) VENV=.venv; TORCH=(torch==2.13.0); EXTRAS=torch,test,rtx,mlflow,triton,oci,corpus; MORE=()
        NEEDS=(mlflow oras requests tritonclient.grpc tritonclient.http google.protobuf ml_dtypes transformers) ;;
  # torchvision/timm live here: PyPI's torchvision builds match this env's CUDA torch, while
  # the CPU torch 2.13 of .venv has no matching torchvision wheel on these machines
  trt)  VENV=.venv-trt; TORCH=(torch==2.14.1); EXTRAS=torch,test,rtx
        MORE=(torch-tensorrt-rtx==2.14.0 torchvision==0.29.1 timm==1.0.31)
        NEEDS=(torch_tensorrt torchvision timm) ;;
  *) echo "usage: tools/setup.sh [core|trt]" >&2; exit 2 ;;
esac
# what both environments' tests import (the test, rtx and torch extras)
NEEDS+=(torch trtpack tensorrt_rtx onnx onnxscript pytest hypothesis jsonschema safetensors
        openapi_spec_validator cryptography model_signing OpenSSL numpy)
stamp="$VENV/.setup-stamp"
want=$(cat pyproject.toml tools/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setting up $VENV (first run: one to two minutes)" >&2
"$PY" -m venv "$VENV"
rm -f "$stamp"  # written again only when this run completes: a failed setup is retried
fail() { echo "setup of $VENV failed: $*" >&2; exit 1; }
# Runs a pip command with one noisy warning line filtered out of its output, and fails on
# pip's own exit status (grep's is not looked at: it is 1 whenever pip printed nothing).
quiet() {
  local -a status
  { "$@" 2>&1 | grep -v "^WARNING: Location" >&2; status=("${PIPESTATUS[@]}"); } || true
  [ "${status[0]}" = 0 ] || fail "'$*' exited with status ${status[0]} (its output is above)"
}
# torch first and pinned: on the project's machines these are local wheels.
quiet "$VENV/bin/pip" install -q "${TORCH[@]}"
quiet "$VENV/bin/pip" install -q -e ".[$EXTRAS]" "${MORE[@]}"
# Everything the tests use, imported: a missing piece must fail here, not turn into skips.
# torch_tensorrt asks the GPU for its capability at import: tests/tt_cpu.py patches those
# queries (and only those) for the import on a machine without one.
"$VENV/bin/python" - "${NEEDS[@]}" <<'PY' || fail "a package the tests need does not import (above)"
import importlib, sys
sys.path.insert(0, "tests")
bad = []
for name in sys.argv[1:]:
    try:
        if name == "torch_tensorrt":
            import tt_cpu
            tt_cpu.import_torch_tensorrt()
        else:
            importlib.import_module(name)
    except Exception as e:
        bad.append(f"  {name}: {type(e).__name__}: {e}")
if bad:
    sys.exit("these do not import:\n" + "\n".join(bad))
PY
for tool in ruff mypy; do
  "$VENV/bin/$tool" --version >/dev/null || fail "$VENV/bin/$tool does not run"
done
if [ "$VENV" = .venv ] && ! command -v docker-registry >/dev/null && [ -z "${TRTPACK_NO_APT:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian's docker-registry with apt (a local OCI registry for the OCI tests)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry) \
      >/dev/null 2>&1 || fail "apt-get install docker-registry failed"
  fi
fi
if [ "$VENV" = .venv ] && ! command -v docker-registry >/dev/null; then
  fail "docker-registry is not on PATH (the OCI tests' registry): install it as root with" \
       "'apt-get install docker-registry' (TRTPACK_NO_APT=1 keeps this script from running apt)"
fi
echo "$want" > "$stamp"
