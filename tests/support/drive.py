"""Drives a sans-I/O session synchronously against the real storage and authenticator, for
tests and property tests that need thousands of sessions without sockets. Requests are
carried out exactly as the asyncio driver does; the only stand-ins are the clock (a value)
and TLS (a TLSInfo result, since the handshake itself is the network tests' business)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from pop3d.auth.authenticator import Authenticator
from pop3d.auth.credentials import CredentialFile
from pop3d.message import MessageEncoder
from pop3d.protocol import events as ev
from pop3d.protocol.session import Session
from pop3d.protocol.settings import ConnectionInfo, SessionSettings
from pop3d.requests import Offload
from pop3d.sasl import requests as rq
from pop3d.security.value import TLSInfo
from pop3d.storage.base import MaildropInUse, MessageGone, StorageError
from pop3d.storage.maildir import MaildirMaildrop, MaildirStore
from tests.support.lab import FAST_ARGON2, Lab


@dataclass
class Driven:
    session: Session
    store: MaildirStore
    authenticator: Authenticator
    now: float = field(default_factory=time.time)
    maildrop: MaildirMaildrop | None = None
    requests: list[object] = field(default_factory=list)
    notices: list[object] = field(default_factory=list)
    closed: str | None = None

    def feed(self, data: bytes = b"") -> bytes:
        """Give the session ``data``; return everything it sends until it wants more."""
        if data:
            self.session.receive_data(data)
        out = bytearray()
        while True:
            event = self.session.next_event()
            if event is ev.NEED_DATA:
                return bytes(out)
            if isinstance(event, ev.Send):
                out += event.data
            elif isinstance(event, ev.Close):
                self.closed = event.reason
                self.release()
                return bytes(out)
            elif isinstance(event, ev.LoginSucceeded | ev.LoginFailed):
                self.notices.append(event)
            else:
                self.requests.append(event)
                out += self.carry_out(event)

    def carry_out(self, request: object) -> bytes:
        written = b""
        result: object = None
        if isinstance(request, rq.VerifyPassword):
            result = self.authenticator.verify_password(request.user, request.password)
        elif isinstance(request, rq.FetchSecrets):
            result = self.authenticator.fetch_secrets(request.user, request.schemes)
        elif isinstance(request, rq.ResolveUser):
            result = self.authenticator.resolve_user(request.user)
        elif isinstance(request, rq.VerifyApop):
            result = self.authenticator.verify_apop(request.user, request.challenge, request.digest)
        elif isinstance(request, ev.OpenMaildrop):
            try:
                self.maildrop = self.store.open(request.user)
            except MaildropInUse as exc:
                result = ev.Failure(ev.FailureKind.IN_USE, str(exc))
            except StorageError as exc:
                result = ev.Failure(ev.FailureKind.TEMPORARY, str(exc))
            else:
                drop = self.maildrop
                result = ev.MaildropOpened(drop.uids, drop.sizes, drop.last_login, self.now)
        elif isinstance(request, ev.ReleaseMaildrop):
            self.release()
        elif isinstance(request, ev.MeasureMessages):
            assert self.maildrop is not None
            result = tuple(self.maildrop.measure(request.indexes))
        elif isinstance(request, ev.RetrieveMessage):
            assert self.maildrop is not None
            try:
                handle = self.maildrop.open_message(request.index)
            except MessageGone as exc:
                result = ev.Failure(ev.FailureKind.PERMANENT, str(exc))
            else:
                with handle:
                    encoder = MessageEncoder(request.body_lines)
                    body = encoder.feed(handle.read()) + encoder.finish()
                written = request.preamble + body
        elif isinstance(request, ev.CommitUpdate):
            assert self.maildrop is not None
            result = ev.CommitResult(*self.maildrop.commit(request.deleted, request.record_login))
            self.release()  # as the asyncio driver: unlocked before the answer goes out
        elif isinstance(request, ev.Pause):
            pass
        elif isinstance(request, Offload):
            try:
                result = request.call()
            except Exception as exc:
                result = exc
        elif isinstance(request, ev.StartTLS):
            result = TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256)
        else:
            raise AssertionError(f"unexpected request {request!r}")
        self.session.resolve(result)
        return written

    def release(self) -> None:
        if self.maildrop is not None:
            self.maildrop.close()
            self.maildrop = None


def settings_for_lab(**overrides: object) -> SessionSettings:
    base: dict[str, object] = {
        "servername": "lab.test",
        "allow_apop": True,
        "failed_login_pause": 0.0,
    }
    base.update(overrides)
    if "policy" not in base:
        from pop3d.security.policy import Policy

        base["policy"] = Policy(allow_plaintext=True)
    return SessionSettings(**base)  # type: ignore[arg-type]


def drive(
    lab: Lab,
    settings: SessionSettings | None = None,
    token: str = "1.2",
    *,
    authenticator: Authenticator | None = None,
    tls: TLSInfo | None = None,
    external_ssf: int = 0,
) -> Driven:
    store = MaildirStore(str(lab.root / "spool" / "%u" / "Maildir"))
    auth = authenticator or Authenticator(CredentialFile(lab.credentials), FAST_ARGON2)
    session = Session(
        settings or settings_for_lab(),
        ConnectionInfo("sid-1", token, external_ssf=external_ssf, tls=tls),
    )
    return Driven(session, store, auth)


def maildir_path(lab: Lab, user: str) -> Path:
    return lab.maildir(user)
