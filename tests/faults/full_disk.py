"""Run inside a private mount namespace (``unshare --mount --propagation private``): mount a
small tmpfs over a user's spool directory and deliver messages into it with the real
``pop3d-admin deliver``, reporting on stdout (JSON) what each delivery returned and what it
left in tmp/ and new/. The mount goes away with the namespace; nothing outside changes.

    python -m tests.faults.full_disk IMAPD_CONF USER_SPOOL_DIR MAILDIR
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TMPFS_SIZE = "256k"


def deliver(config: str, message: bytes) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "pop3d.cli.admin", "-C", config, "deliver", "bob"],
        input=message,
        capture_output=True,
        timeout=60,
    )
    return {"code": done.returncode, "stderr": done.stderr.decode(errors="replace")}


def contents(maildir: Path) -> dict[str, list[str]]:
    return {
        sub: sorted(os.listdir(maildir / sub)) if (maildir / sub).is_dir() else []
        for sub in ("tmp", "new", "cur")
    }


def fill(folder: Path) -> None:
    """Write until the filesystem refuses (ENOSPC)."""
    with open(folder / "filler", "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == 28, exc  # ENOSPC


def mounted_small(spool: str) -> bool:
    """A small tmpfs over ``spool``; if it cannot be mounted, why, on stdout (JSON)."""
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", spool],
        capture_output=True,
    )
    if mounted.returncode != 0:
        print(json.dumps({"mount": mounted.stderr.decode(errors="replace")}))
    return mounted.returncode == 0


def main(config: str, spool: str, maildir_name: str) -> None:
    spool_dir = Path(spool)
    if not mounted_small(spool):
        return
    maildir = spool_dir / maildir_name
    report: dict[str, object] = {"mount": "ok"}
    # 1. A message bigger than the filesystem: ENOSPC while writing tmp/.
    report["too_big"] = deliver(config, b"Subject: big\n\n" + (b"y" * 999 + b"\n") * 400)
    report["after_too_big"] = contents(maildir)
    # 2. The filesystem still works: a small message goes in.
    report["small"] = deliver(config, b"Subject: small\n\nhello\n")
    report["after_small"] = contents(maildir)
    # 3. Full to the last block: even a small message cannot be written.
    fill(spool_dir)
    report["full"] = deliver(config, b"Subject: small\n\nagain\n")
    report["after_full"] = contents(maildir)
    print(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:4])
