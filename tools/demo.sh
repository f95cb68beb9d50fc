#!/usr/bin/env bash
# Set up what the demo needs, then run the end-to-end demo (export, save, inspect, load, run,
# compare). A complete .venv (tools/setup.sh, what the tests use) is reused when there is one;
# otherwise .venv-demo gets torch 2.13 (CPU) and trtpack only (tools/setup.sh demo).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/.setup-stamp ]; then
  tools/setup.sh  # returns at once when .venv is up to date
  PY=.venv/bin/python
else
  tools/setup.sh demo
  PY=.venv-demo/bin/python
fi
exec "$PY" tools/demo.py "$@"
