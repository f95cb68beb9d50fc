#!/usr/bin/env bash
# Set everything up, then run the end-to-end demo (export, save, inspect, load, run, compare).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
exec .venv/bin/python tools/demo.py "$@"
