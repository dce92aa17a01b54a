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

# --interpreter PYTHON (before run.py's own options): the servers, pop3d and the load
# generator run on that Python instead of the project's virtualenv, in a virtualenv of its
# own made once under bench/.lab/ with pop3d installed as scripts/setup.sh --test does. The
# interpreter's build moves pop3d's CPU figures (RESULTS.md section 29: a Python built
# without PGO and LTO, with a shared libpython, spends about 6 % more per session than
# Debian's python3, which is what scripts/setup.sh uses on a fresh Debian 12).
python=.venv/bin/python
if [ "${1:-}" = "--interpreter" ]; then
    if [ $# -lt 2 ] || ! "$2" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
        echo "bench: --interpreter needs a Python 3.11 or later (got '${2:-}')" >&2
        exit 64
    fi
    version=$("$2" -c 'import platform, sys; print(platform.python_version() + "-" + sys.prefix.replace("/", "_"))')
    venv="bench/.lab/venv-$version"
    digest=$(cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)
    if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.installed" 2>/dev/null)" != "$digest" ]; then
        mkdir -p bench/.lab
        "$2" -m venv "$venv"
        "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
        # test: k5test and the clients' libraries the SASL and GSSAPI figures use
        "$venv/bin/python" -m pip install -q -e ".[test,bench]" -c requirements.lock
        echo "$digest" > "$venv/.installed"
    fi
    python="$venv/bin/python"
    shift 2
fi

exec "$python" bench/run.py "$@"
