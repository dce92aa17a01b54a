#!/usr/bin/env bash
# pop3d vs Debian's Dovecot: install what is missing, then run bench/run.py (arguments are
# passed on; see `bash bench/run.sh --help`). Debian 12, as root. Everything the run writes
# is under bench/.lab/ (git-ignored); results go to bench/.lab/results/.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "bench: run as root (Dovecot's master must start as root)" >&2
    exit 1
fi

# The virtualenv and pop3d itself, and matplotlib for the scale chart (the bench extra).
bash scripts/setup.sh
.venv/bin/python -c "import matplotlib" 2>/dev/null || .venv/bin/pip install -q -e ".[bench]"

# Debian's Dovecot, without its system service (bench/install-dovecot.sh says why).
bash bench/install-dovecot.sh
if [ -s /run/dovecot/master.pid ] && kill -0 "$(cat /run/dovecot/master.pid)" 2>/dev/null; then
    echo "bench: note: a system dovecot is running (not used; it competes for CPU)" >&2
fi

# 1,000 idle sessions (and the scale figure's crowd): sockets on both ends, plus
# Dovecot's default_client_limit.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

exec .venv/bin/python bench/run.py "$@"
