"""The server secret: 32 random bytes in a file of mode 0600, made on first use.

It keys the SCRAM decoys for unknown users (so they stay the same across restarts and
workers, as a real user's salt does). Losing it is harmless; reading it lets an attacker
tell decoys from real users, nothing more.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

SIZE = 32


class ServerSecretError(Exception):
    pass


def load_or_create(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ServerSecretError(f"cannot create {path}: {exc.strerror}") from None
    else:
        try:
            os.write(fd, secrets.token_bytes(SIZE))
            os.fsync(fd)
        finally:
            os.close(fd)
    try:
        st = os.stat(path)
        data = path.read_bytes()
    except OSError as exc:
        raise ServerSecretError(f"cannot read {path}: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ServerSecretError(
            f"{path}: mode {stat.S_IMODE(st.st_mode):04o} lets group or others read it (chmod 600)"
        )
    if len(data) != SIZE:
        raise ServerSecretError(f"{path}: expected {SIZE} bytes, found {len(data)}")
    return data
