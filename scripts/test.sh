#!/usr/bin/env bash
# Set up (if needed) and run everything CI runs: lint, types, the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/mypy --strict --follow-imports=silent fuzz  # the harnesses are typed too
bash scripts/audit.sh
exec .venv/bin/pytest -n 4 "$@"
