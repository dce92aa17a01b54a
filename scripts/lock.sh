#!/usr/bin/env bash
# Rewrite requirements.lock: the newest releases that pyproject.toml's runtime dependencies
# admit, resolved in a clean virtualenv (nothing from .venv or the test extra leaks in).
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"${PYTHON:-python3}" -m venv "$scratch/venv"
"$scratch/venv/bin/python" -m pip install -q --upgrade pip >/dev/null
"$scratch/venv/bin/python" -m pip install -q . >/dev/null
{
    sed -n '/^#/p' requirements.lock
    "$scratch/venv/bin/python" -m pip freeze --exclude pop3d
} > "$scratch/lock"
mv "$scratch/lock" requirements.lock
echo "lock: requirements.lock rewritten; run scripts/audit.sh and the suite before committing it"
