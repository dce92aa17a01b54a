#!/usr/bin/env bash
# Debian's Dovecot, the peer the bench (and its smoke test) measures against, installed
# without letting the package start a system dovecot on ports 110/995 from /etc/dovecot:
# nothing here ever uses that one (policy-rc.d during the install; stopped if it started
# anyway). Idempotent; Debian 12, as root.
set -euo pipefail
if dpkg-query -W -f='${Status}' dovecot-pop3d 2>/dev/null | grep -q "install ok installed"; then
    exit 0
fi
echo "installing dovecot-pop3d (the bench's peer; no system service is started)" >&2
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# pop3d bench: no service starts during the install\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends dovecot-pop3d >/dev/null
[ "$made_policy" = 1 ] && rm -f "$policy"
if [ -s /run/dovecot/master.pid ] && kill -0 "$(cat /run/dovecot/master.pid)" 2>/dev/null; then
    echo "stopping the system dovecot the package started" >&2
    if [ -d /run/systemd/system ]; then
        systemctl stop dovecot.service dovecot.socket || true
    else
        doveadm -c /etc/dovecot/dovecot.conf stop || true
    fi
fi
