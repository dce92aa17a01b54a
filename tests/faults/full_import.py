"""Run inside a private mount namespace (``unshare --mount --propagation private``): mount a
small tmpfs over a user's spool directory, fill it so that ``pop3d-uidl`` has room for a
few octets of its next line only, import a Dovecot Maildir with the real ``pop3d-admin
import``, make room and import again, then report on stdout (JSON) what each run returned,
the size ``pop3d-uidl`` had around the first, and the UIDLs the Maildir serves. The mount
goes away with the namespace; nothing outside changes.

    python -m tests.faults.full_import IMAPD_CONF USER_SPOOL_DIR SOURCE_MAILDIR
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pop3d.storage.maildir import MaildirStore
from tests.faults.full_disk import fill, mounted_small

# Lines of messages that are not there (ignored by the reader) up to a few octets short of
# a page: the next line's first octets fit in the page the file has, the rest needs another.
_ROOM = 6


def imported(config: str, source: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "pop3d.cli.admin", "-C", config]
        + ["import", "--dovecot", source, "bob"],
        capture_output=True,
        timeout=60,
    )
    return {"code": done.returncode, "stderr": done.stderr.decode(errors="replace")}


def main(config: str, spool: str, source: str) -> None:
    spool_dir = Path(spool)
    if not mounted_small(spool):
        return
    maildir = spool_dir / "Maildir"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "pop3d.lock").touch()
    orphan = b"1600000000.gone%06d gone\n"
    lines = b"".join(orphan % n for n in range((4096 - _ROOM) // len(orphan % 0)))
    (maildir / "pop3d-uidl").write_bytes(lines + b"x" * (4096 - _ROOM - len(lines) - 1) + b"\n")
    uidl_map = maildir / "pop3d-uidl"
    report: dict[str, object] = {"mount": "ok", "before": uidl_map.stat().st_size}
    fill(spool_dir)
    report["full"] = imported(config, source)
    report["after_full"] = uidl_map.stat().st_size
    os.unlink(spool_dir / "filler")
    report["again"] = imported(config, source)
    store = MaildirStore("%p/%u/Maildir", str(spool_dir.parent))
    drop = store.open(spool_dir.name)
    report["uidls"] = list(drop.uids)
    drop.close()
    print(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:4])
