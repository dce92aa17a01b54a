"""The embedded default: ``python -m pop3d.demo DIR`` prepares a complete, self-contained
installation in DIR (config, CA and server certificate, a demo user with a generated
password, a few messages) and prints how to connect. Idempotent: an existing DIR keeps its
password, certificate and mail."""

from __future__ import annotations

import argparse
import io
import secrets
import sys
from importlib import resources
from pathlib import Path

from pop3d.auth import credentials, schemes
from pop3d.auth.from_config import credentials_path, needed_schemes
from pop3d.config import imapd
from pop3d.security.secret import Secret
from pop3d.storage.maildir import store_from_config
from pop3d.transport import selfsigned

DEMO_USER = "demo"

_MESSAGES = [
    ("Welcome to pop3d", "This message was delivered by the demo set-up.\n"),
    ("Dot-stuffing", ".a line that starts with a dot\n..and one with two\n"),
    ("UTF-8", "Grüße aus Köln — 日本語 ✓\n"),
]


def _template(name: str, root: Path) -> str:
    text = resources.files("pop3d").joinpath("defaults", name).read_text(encoding="utf-8")
    return text.replace("@ROOT@", str(root))


def prepare(root: Path) -> str:
    root = root.resolve()
    for sub in ("config", "spool", "tls"):
        (root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    for name in ("imapd.conf", "cyrus.conf"):
        target = root / name
        if not target.exists():
            target.write_text(_template(name, root), encoding="utf-8")
    tls_dir = root / "tls"
    if not (tls_dir / "cert.pem").exists():
        ca = selfsigned.make_ca("pop3d demo CA")
        ca.write(tls_dir / "ca.pem")
        server = selfsigned.issue(
            ca, "localhost", dns_names=("localhost",), ip_addresses=("127.0.0.1", "::1")
        )
        server.write(tls_dir / "cert.pem", tls_dir / "key.pem")
    config = imapd.load(root / "imapd.conf")
    password_file = root / "PASSWORD"
    if not password_file.exists():
        password = secrets.token_urlsafe(12)
        values, _ = schemes.derive(Secret(password.encode()), needed_schemes(config))
        record = credentials.UserRecord(DEMO_USER, values)
        credentials.update(credentials_path(config), DEMO_USER, lambda _old: record)
        password_file.touch(mode=0o600)
        password_file.write_text(password + "\n")
        store = store_from_config(config)
        for subject, body in _MESSAGES:
            message = f"From: pop3d <postmaster@localhost>\nTo: {DEMO_USER}@localhost\n"
            message += f"Subject: {subject}\nContent-Type: text/plain; charset=utf-8\n\n{body}"
            store.deliver(DEMO_USER, io.BytesIO(message.encode()))
    return password_file.read_text().strip()


def main(argv: list[str] | None = None) -> int:
    # argparse, not sys.argv[1] taken as it comes: `python -m pop3d.demo --help` made a
    # folder named "--help" holding a demo installation.
    parser = argparse.ArgumentParser(
        prog="python -m pop3d.demo",
        description="Prepare (or keep) a self-contained pop3d installation in DIR: config, "
        "a CA and server certificate, a demo user with a generated password, a few messages.",
    )
    parser.add_argument("dir", metavar="DIR", type=Path)
    root: Path = parser.parse_args(argv).dir
    password = prepare(root)
    ca = (root / "tls" / "ca.pem").resolve()
    print(f"""
pop3d demo in {root.resolve()}
  user:      {DEMO_USER}
  password:  {password}
  POP3+STLS: 127.0.0.1:1110      POP3S: 127.0.0.1:1995      CA: {ca}

  curl --ssl-reqd --cacert {ca} -u {DEMO_USER}:{password} pop3://localhost:1110/
  curl --cacert {ca} -u {DEMO_USER}:{password} pop3s://localhost:1995/1
""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
