#!/usr/bin/env bash
# Idempotent set-up on Debian 12: apt packages that are missing, the virtualenv in .venv,
# and the package itself (editable). `--test` adds what the test suite needs.
# Run as root (or with sudo available for apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

packages=(python3 python3-venv openssl ca-certificates)
# MIT Kerberos: the library python-gssapi binds to and KPOP's verifier loads (libkrb5.so.3),
# and what building python-gssapi needs (krb5-config, a C compiler, Python headers)
packages+=(libkrb5-3 libgssapi-krb5-2 libkrb5-dev gcc python3-dev)
if [ "$want_test" = 1 ]; then
    # real clients the interoperability tests drive
    packages+=(curl fetchmail)
    # Cyrus saslauthd and saslpasswd2 for tests/auth/test_saslauthd.py (which also uses
    # unshare and mount, from util-linux and mount: always present on Debian)
    packages+=(sasl2-bin)
    # Cyrus's own POP3 client (pop3test, libsasl2) for the SASL interoperability tests
    packages+=(cyrus-clients libsasl2-modules)
    # GNU SASL, an independent client for CRAM-MD5 and DIGEST-MD5
    packages+=(gsasl)
    # a real MIT KDC for the Kerberos tests (k5test starts it), kinit/klist, and Cyrus
    # SASL's GSSAPI plug-in for pop3test -m GSSAPI
    packages+=(krb5-kdc krb5-admin-server krb5-user libsasl2-modules-gssapi-mit)
    # man and groff render the manual pages in tests/cli/test_man_pages.py (groff -ww)
    packages+=(man-db groff-base)
    # Cyrus 3.6 for the IMAP import tests (tests/support/cyrus.py unpacks cyrus-common,
    # cyrus-imapd and cyrus-pop3d, never installed): what its binaries link beyond the
    # packages' own libraries, and the sasldb plug-in its users log in with
    packages+=(libsasl2-modules-db libwrap0 libssl3 zlib1g libcom-err2)
    # systemd-socket-activate and systemd-analyze: socket activation and the contrib/ units
    # (tests/server/test_operations.py, tests/cli/test_contrib.py); the privilege-drop tests
    # make their own system account (pop3d-test) with useradd (passwd, always present)
    packages+=(systemd)
    # libfuse 3 (mfusepy loads it) for the filesystem that fails with EIO on demand
    # (tests/faults/test_eio.py); fuse3 has fusermount3, to unmount one by hand
    packages+=(fuse3 libfuse3-3)
    # strace counts a worker's sends (tests/server/test_network.py)
    packages+=(strace)
    # HAProxy, the PROXY protocol's own producer, in front of pop3d -H
    # (tests/interop/test_haproxy.py starts its own in the foreground)
    packages+=(haproxy)
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    sudo_cmd=()
    [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    # No package's system service starts during the install (haproxy, krb5-kdc,
    # saslauthd): the tests start their own on loopback, and a system haproxy or KDC left
    # running is nothing this set-up asked for (policy-rc.d, as bench/install-dovecot.sh)
    policy=/usr/sbin/policy-rc.d
    made_policy=0
    if [ "$(id -u)" -eq 0 ] && [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# pop3d set-up: no service starts during the install\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        made_policy=1
    fi
    "${sudo_cmd[@]}" apt-get update -qq
    status=0
    "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || status=$?
    [ "$made_policy" = 1 ] && rm -f "$policy"
    [ "$status" = 0 ] || exit "$status"
fi

# The bench's smoke test (tests/bench) measures against Debian's Dovecot, and the migration
# tests (tests/interop/test_dovecot_migration.py) move mail from it (dovecot-lda, doveadm):
# installed without its system service.
if [ "$want_test" = 1 ] && [ "$(id -u)" -eq 0 ]; then
    bash bench/install-dovecot.sh
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
extras=""
stamp=".venv/.installed"
if [ "$want_test" = 1 ]; then
    # bench: matplotlib, for the bench smoke test's scale chart (tests/bench)
    extras="[test,bench]"
    stamp=".venv/.installed-test"
fi
digest=$(cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    # the runtime dependencies exactly as locked (scripts/audit.sh audits that file)
    .venv/bin/python -m pip install -q -e ".${extras}" -c requirements.lock
    echo "$digest" > "$stamp"
fi

# Debian's Cyrus unpacked once into tests/.cache/cyrus (apt-get download, dpkg -x): the
# import tests start it without the network.
if [ "$want_test" = 1 ]; then
    .venv/bin/python -m tests.support.cyrus
fi

# The manual pages where man(1) finds them: an editable install skips pyproject's data-files,
# so link them into .venv/share/man (man-db searches <dir>/../share/man for each <dir> on
# PATH: `man pop3d` works with .venv/bin on PATH, `man -M .venv/share/man pop3d` without).
for page in pop3d/man/*.[58]; do
    section=${page##*.}
    mkdir -p ".venv/share/man/man$section"
    ln -sfn "$PWD/$page" ".venv/share/man/man$section/${page##*/}"
done
