#!/usr/bin/env bash
# Set up (if needed) and run pop3d on its embedded default configuration: POP3 with STLS on
# 127.0.0.1:1110, POP3S on 127.0.0.1:1995, everything under .demo/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pop3d.demo .demo
exec .venv/bin/pop3d-master -C .demo/imapd.conf -M .demo/cyrus.conf
