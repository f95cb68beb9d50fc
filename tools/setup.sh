#!/usr/bin/env bash
# Set up .venv: torch (CPU), trtpack in editable mode, TensorRT-RTX (builds real engines on a
# CPU) and the test tools. Idempotent: returns at once when pyproject.toml and this script are
# unchanged since the last successful run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
stamp="$VENV/.setup-stamp"
want=$(cat pyproject.toml tools/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setting up $VENV (first run: about a minute)" >&2
"$PY" -m venv "$VENV"
# torch first and pinned: on the project's machines this is a local CPU wheel.
"$VENV/bin/pip" install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" >&2 || true
"$VENV/bin/pip" install -q -e ".[test,rtx]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
"$VENV/bin/python" -c "import torch, trtpack, tensorrt_rtx, pytest" \
  || { echo "setup failed: see the pip output above" >&2; exit 1; }
echo "$want" > "$stamp"
