"""Drives a sans-I/O session synchronously against the real storage and authenticator, for
tests and property tests that need thousands of sessions without sockets. Requests are
carried out exactly as the asyncio driver does; the only stand-ins are the clock (a value)
and TLS (a TLSInfo result, since the handshake itself is the network tests' business)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from pop3d.auth.authenticator import Authenticator
from pop3d.auth.credentials import CredentialFile
from pop3d.message import MessageEncoder
from pop3d.protocol import events as ev
from pop3d.protocol.session import Session
from pop3d.protocol.settings import ConnectionInfo, SessionSettings
from pop3d.requests import Request
from pop3d.security.value import TLSInfo
from pop3d.server.carry_out import Work, carry_out
from pop3d.storage.base import MessageGone
from pop3d.storage.maildir import MaildirMaildrop, MaildirStore
from tests.support.lab import FAST_ARGON2, Lab


@dataclass
class Driven:
    session: Session
    work: Work
    now: float = field(default_factory=time.time)
    requests: list[object] = field(default_factory=list)
    notices: list[object] = field(default_factory=list)
    closed: str | None = None

    @property
    def authenticator(self) -> Authenticator:
        return self.work.authenticator

    @property
    def maildrop(self) -> MaildirMaildrop | None:
        return self.work.maildrop  # type: ignore[return-value]

    def waiting(self) -> None:
        """Called each time the session asks for input (the fuzz harness checks its
        invariants here)."""

    def feed(self, data: bytes = b"") -> bytes:
        """Give the session ``data``; return everything it sends until it wants more."""
        if data:
            self.session.receive_data(data)
        out = bytearray()
        while True:
            event = self.session.next_event()
            if event is ev.NEED_DATA:
                self.waiting()
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
        """The shared table (as the asyncio driver), except what needs a channel or clock."""
        written = b""
        result: object = None
        if isinstance(request, ev.RetrieveMessage):
            assert self.work.maildrop is not None
            try:
                handle = self.work.maildrop.open_message(request.index)
            except MessageGone as exc:
                result = ev.StorageFailure(ev.FailureKind.PERMANENT, str(exc))
            else:
                with handle:
                    encoder = MessageEncoder(request.body_lines)
                    body = encoder.feed(handle.read()) + encoder.finish()
                written = request.preamble + body
        elif isinstance(request, ev.Pause | ev.InstallLayer):
            pass
        elif isinstance(request, ev.StartTLS):
            result = TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256)
        else:
            assert isinstance(request, Request)
            result = carry_out(self.work, request)
            if isinstance(result, ev.MaildropOpened):
                result = dataclasses.replace(result, now=self.now)
        self.session.resolve(result)
        return written

    def release(self) -> None:
        self.work.release()


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
    kpop: tuple[str, str] | None = None,
) -> Driven:
    """``kpop``: (principal, local user) a KPOP handshake proved before the greeting."""
    store = MaildirStore(str(lab.root / "spool" / "%u" / "Maildir"))
    auth = authenticator or Authenticator(CredentialFile(lab.credentials), FAST_ARGON2)
    principal, user = kpop or (None, None)
    info = ConnectionInfo(
        "sid-1", token, external_ssf=external_ssf, tls=tls, kpop_principal=principal, kpop_user=user
    )
    session = Session(settings or settings_for_lab(), info)
    return Driven(session, Work(auth, store, session_id="sid-1"))


def maildir_path(lab: Lab, user: str) -> Path:
    return lab.maildir(user)
