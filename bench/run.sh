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

# The virtualenv and pop3d itself.
bash scripts/setup.sh

# Debian's Dovecot. The package would start a system dovecot on ports 110/995 from
# /etc/dovecot: the benchmark never uses it, so keep it from starting (policy-rc.d) and
# stop it if it was started anyway.
if ! dpkg-query -W -f='${Status}' dovecot-pop3d 2>/dev/null | grep -q "install ok installed"; then
    echo "bench: installing dovecot-pop3d" >&2
    policy=/usr/sbin/policy-rc.d
    made_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# bench/run.sh: no service starts during the install\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends dovecot-pop3d >/dev/null
    [ "$made_policy" = 1 ] && rm -f "$policy"
    if [ -s /run/dovecot/master.pid ] && kill -0 "$(cat /run/dovecot/master.pid)" 2>/dev/null; then
        echo "bench: stopping the system dovecot the package started" >&2
        if [ -d /run/systemd/system ]; then
            systemctl stop dovecot.service dovecot.socket || true
        else
            doveadm -c /etc/dovecot/dovecot.conf stop || true
        fi
    fi
fi
if [ -s /run/dovecot/master.pid ] && kill -0 "$(cat /run/dovecot/master.pid)" 2>/dev/null; then
    echo "bench: note: a system dovecot is running (not used; it competes for CPU)" >&2
fi

# 1,000 idle sessions: sockets on both ends, plus Dovecot's default_client_limit.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

exec .venv/bin/python bench/run.py "$@"
