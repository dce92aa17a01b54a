"""Run fetchmail ``-p KPOP`` against a server on any port, without touching /etc/services.

fetchmail's KPOP looks up the service *name* ``kpop`` (``--service 1109`` does the sendauth
but then gives up: "We've run out of allowed authenticators", see kpop.md §1.1), and Debian's
/etc/services has no such line. So each run happens in a private mount namespace
(``unshare -m``) where a copy of /etc/services with ``kpop <port>/tcp`` appended is
bind-mounted over the real one; the machine's file is never edited, and the port can be any
free one. It needs root, or unprivileged user namespaces (then ``unshare -rm``).

Usage (the lead can point it at the real pop3d the same way)::

    env = realm.kinit("alice", tmp_path / "ccache")        # KRB5_CONFIG, KRB5CCNAME
    run = fetchmail_kpop(port=server_port, user="alice", env=env, home=tmp_path / "fm")
    assert run.code == FETCHED and run.delivered.count(b"Received: from ") == 3

``run.delivered`` is what fetchmail's MDA got (``cat >> file``: a Received: header per
message, LF line ends); ``run.log`` its ``-v`` output. Exit codes as in fetchmail(1).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

FETCHED = 0
NO_MAIL = 1
AUTH_FAILED = 3
PROTOCOL_ERROR = 4

# bind-mount the private services file, then become fetchmail (argv: services, fetchmail...)
_INSIDE = 'mount --bind "$1" /etc/services && shift && exec "$@"'


@dataclass
class FetchmailRun:
    code: int
    log: str
    delivered: bytes  # everything the MDA received so far (across runs with the same home)


def services_file(folder: Path, port: int) -> Path:
    """A copy of /etc/services whose ``kpop`` entry (ours is the only one) names ``port``."""
    lines = [
        line
        for line in Path("/etc/services").read_text().splitlines()
        if line.split("#")[0].split()[:1] != ["kpop"]
    ]
    path = folder / "services"
    path.write_text("\n".join([*lines, f"kpop\t\t{port}/tcp\t\t\t# KPOP (test)"]) + "\n")
    return path


def namespace_prefix() -> list[str]:
    """``unshare`` with a private mount namespace (mounts never propagate back)."""
    user = [] if os.geteuid() == 0 else ["-r"]
    return ["unshare", "-m", *user, "--propagation", "private"]


def fetchmail_kpop(
    *,
    port: int,
    user: str,
    env: Mapping[str, str],
    home: Path,
    host: str = "localhost",
    options: Sequence[str] = (),
    timeout: float = 60.0,
) -> FetchmailRun:
    """One ``fetchmail -p KPOP`` run as ``user`` against ``host`` with ``kpop`` = ``port``.

    ``env`` must carry the Kerberos client setting (KRB5_CONFIG, KRB5CCNAME holding the
    user's TGT). ``home`` keeps the rc file, the UID file (``--uidl`` runs) and the MDA's
    output across runs. STLS is off (``--sslproto ''``): fetchmail cannot do KPOP in TLS."""
    home.mkdir(parents=True, exist_ok=True)
    rc = home / "fetchmailrc"
    if not rc.exists():
        rc.write_text("")
        rc.chmod(0o600)
    out = home / "delivered.mbox"
    services = services_file(home, port)
    argv = [
        *namespace_prefix(),
        "sh", "-c", _INSIDE, "sh", str(services),
        "fetchmail", "-f", str(rc), "-i", str(home / "fetchids"),
        "--pidfile", str(home / "fetchmail.pid"), "--nosyslog", "-v",
        "-p", "KPOP", "-u", user, "--sslproto", "",
        "--mda", f"cat >> {shlex.quote(str(out))}",
        *options, host,
    ]  # fmt: skip
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        **env,
        "HOME": str(home),
        "LC_ALL": "C",
        "LANG": "C",
    }
    done = subprocess.run(
        argv, env=full_env, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    log = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    return FetchmailRun(done.returncode, log, out.read_bytes() if out.exists() else b"")
