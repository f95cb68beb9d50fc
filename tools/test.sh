#!/usr/bin/env bash
# Set everything up, then run the linter and the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
.venv/bin/ruff check trtpack tests tools
.venv/bin/python -m pytest "$@"
