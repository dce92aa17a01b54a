"""Fuzz target: the POP3 session core (pop3d/protocol/session.py: ``receive_data`` /
``next_event`` / ``resolve``), driven in memory against a real Maildir in a temporary
directory and the real Authenticator (cheap Argon2), in every state.

Invariant, for any client bytes in any chunking, in any state and any settings below:
* no exception escapes the session;
* every byte it sends is a well-formed response (fuzz.support.check_responses: +OK, -ERR
  or "+ " base64, printable ASCII status lines within 512 octets, CRLF, multi-line
  answers dot-stuffed and dot-terminated);
* memory is bounded: whenever it asks for data its line buffer holds less than the line
  limit in force (the SASL one only while an exchange waits for a response) and nothing
  is left unsent;
* a TRANSACTION session has its maildrop, and a CommitUpdate comes only in UPDATE.

Input (fuzz.support.session_input): byte 0 the mode (the state the fixed prefix leads
to: fuzz/seed.py MODES), bytes 1-2 settings flags (FLAG_* below), byte 3 the chunking,
then the client's bytes.

    python fuzz/session_core.py [libFuzzer flags] [corpus dir ...]
"""

from __future__ import annotations

import base64
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo root, not fuzz/

import atheris

with atheris.instrument_imports(include=["pop3d"]):
    from fuzz.support import (
        SESSION_HEADER,
        InvariantBroken,
        check,
        check_responses,
        chunks,
    )
    from pop3d.auth.authenticator import Authenticator
    from pop3d.auth.credentials import CredentialFile
    from pop3d.auth.identity import IdentityRules
    from pop3d.auth.tokens import TokenValidator, read_jwks
    from pop3d.protocol import events as ev
    from pop3d.protocol.session import Session
    from pop3d.protocol.settings import ConnectionInfo, SessionSettings
    from pop3d.protocol.states import State
    from pop3d.sasl import registry
    from pop3d.sasl import requests as rq
    from pop3d.security.policy import Policy
    from pop3d.security.value import TLSInfo
    from pop3d.server.carry_out import Work
    from pop3d.storage.maildir import MaildirStore
    from tests.support.drive import Driven
    from tests.support.lab import FAST_ARGON2, Lab
    from tests.support.sasl_vectors import SASL_VECTORS

FLAG_NO_PLAINTEXT = 1 << 0
FLAG_TLS_REQUIRED = 1 << 1
FLAG_NO_APOP = 1 << 2
FLAG_READONLY = 1 << 3
FLAG_ALL_MECHANISMS = 1 << 4  # legacy ones too (CRAM-MD5, DIGEST-MD5)
FLAG_SERVERINFO_MIN = 1 << 5
FLAG_SERVERINFO_OFF = 1 << 6
FLAG_SMALL_LINES = 1 << 7  # line limit 64, SASL line limit 128
FLAG_FEW_BAD_COMMANDS = 1 << 8
FLAG_LOGIN_DELAY = 1 << 9
FLAG_PAUSES = 1 << 10
FLAG_NO_STLS = 1 << 11
FLAG_EXPIRE = 1 << 12
FLAG_MINIMUM_SSF = 1 << 13
FLAG_PROXY_AUTHORIZER = 1 << 14
FLAG_VIRTDOMAINS = 1 << 15

TLS = TLSInfo(
    "TLSv1.3",
    "TLS_AES_256_GCM_SHA384",
    256,
    client_identity="alice",
    channel_bindings=(("tls-server-end-point", b"\x01" * 32),),
)
LOGIN = b"USER alice\r\nPASS wonderland\r\n"
SCRAM_FIRST = base64.b64encode(b"n,,n=alice,r=fuzz-client-nonce")


@dataclass(frozen=True)
class Mode:
    pop3s: bool  # TLS from the start (ConnectionInfo.tls)
    prefix: tuple[bytes, ...]  # fed one after the other, each drained
    mechanisms: tuple[str, ...] = ()  # added to the enabled ones


MODES = (
    Mode(False, ()),  # 0 pre-auth
    Mode(False, (LOGIN,)),  # 1 TRANSACTION
    Mode(False, (b"AUTH PLAIN\r\n",)),  # 2 mid-AUTH, waiting for the response
    Mode(False, (b"AUTH SCRAM-SHA-256 " + SCRAM_FIRST + b"\r\n",)),  # 3 mid-SCRAM
    Mode(False, (b"STLS\r\n",)),  # 4 after STLS
    Mode(False, (b"STLS\r\n", LOGIN)),  # 5 after STLS, TRANSACTION
    Mode(True, (b"AUTH DIGEST-MD5\r\n",), ("DIGEST-MD5",)),  # 6 pop3s, mid-DIGEST-MD5
    Mode(True, (b"AUTH PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=\r\n",)),  # 7 pop3s, TRANSACTION
)

LAB = Lab(Path(tempfile.mkdtemp(prefix="pop3d-fuzz-session-"))).create()
STORE = MaildirStore(str(LAB.root / "spool" / "%u" / "Maildir"))
AUTHENTICATOR = Authenticator(CredentialFile(LAB.credentials), FAST_ARGON2)
VALIDATOR = TokenValidator(
    issuer="https://issuer.example.com",
    audience="pop3d.example.com",
    jwks=read_jwks(SASL_VECTORS / "oauth-jwks.json"),
)
DEFAULT_MECHANISMS = registry.enabled(None, token_validation=True)
ALL_MECHANISMS = tuple(name for name in registry.ORDER if name in registry.names())


def settings(flags: int, mode: Mode) -> SessionSettings:
    mechanisms = ALL_MECHANISMS if flags & FLAG_ALL_MECHANISMS else DEFAULT_MECHANISMS
    mechanisms += tuple(name for name in mode.mechanisms if name not in mechanisms)
    serverinfo = "on"
    if flags & FLAG_SERVERINFO_MIN:
        serverinfo = "min"
    if flags & FLAG_SERVERINFO_OFF:
        serverinfo = "off"
    pauses = 1.0 if flags & FLAG_PAUSES else 0.0
    return SessionSettings(
        servername="lab.test",
        serverinfo=serverinfo,
        allow_apop=not flags & FLAG_NO_APOP,
        policy=Policy(
            allow_plaintext=not flags & FLAG_NO_PLAINTEXT,
            tls_required=bool(flags & FLAG_TLS_REQUIRED),
            starttls_offered=not flags & FLAG_NO_STLS,
            minimum_ssf=1 if flags & FLAG_MINIMUM_SSF else 0,
        ),
        expire_seconds=0 if flags & FLAG_EXPIRE else -1,
        min_poll_seconds=60 if flags & FLAG_LOGIN_DELAY else 0,
        poll_padding=2 if flags & FLAG_LOGIN_DELAY else 1,
        line_limit=64 if flags & FLAG_SMALL_LINES else 8192,
        bad_command_limit=3 if flags & FLAG_FEW_BAD_COMMANDS else 20,
        failed_login_pause=pauses,
        plaintext_login_pause=pauses,
        readonly=bool(flags & FLAG_READONLY),
        sasl_mechanisms=mechanisms,
        sasl_line_limit=128 if flags & FLAG_SMALL_LINES else 65536,
        proxy_authorizers=frozenset({"alice"}) if flags & FLAG_PROXY_AUTHORIZER else frozenset(),
        identity=IdentityRules(
            virtdomains=bool(flags & FLAG_VIRTDOMAINS), defaultdomain="lab.test"
        ),
    )


class Driver(Driven):
    """tests/support/drive.py's driver, plus what it lacks (bearer tokens, a TLS with
    channel bindings and a client identity), the memory check at every NEED_DATA, and a
    note of commits so the harness can restore the maildrops."""

    committed = False

    def waiting(self) -> None:
        session = self.session
        reader = session._reader
        check(
            reader.buffered < reader.limit,
            f"{reader.buffered} octets buffered, limit {reader.limit}",
        )
        if session.state is not State.AUTHENTICATING:
            check(reader.limit == session.settings.line_limit, "SASL limit left set")
        if session.state is State.TRANSACTION:
            check(session.maildrop_open, "TRANSACTION without a maildrop")

    def carry_out(self, request: object) -> bytes:
        if isinstance(request, rq.VerifyBearer):
            self.session.resolve(VALIDATOR.verify(request.token))
            return b""
        if isinstance(request, ev.StartTLS):
            self.session.resolve(TLS)
            return b""
        if isinstance(request, ev.CommitUpdate):
            check(self.session.state is State.UPDATE, f"commit in {self.session.state}")
            self.committed = True
        if isinstance(request, ev.OpenMaildrop | ev.MeasureMessages | ev.RetrieveMessage):
            check(self.session.state is not State.CLOSED, "a request after CLOSED")
        try:
            return super().carry_out(request)
        except AssertionError as exc:
            raise InvariantBroken(f"the driver cannot carry out {request!r}: {exc}") from None


def test_one_input(data: bytes) -> None:
    if len(data) < SESSION_HEADER:
        return
    mode = MODES[data[0] % len(MODES)]
    flags = data[1] | data[2] << 8
    session = Session(
        settings(flags, mode),
        ConnectionInfo("fuzz-1", "1.2", tls=TLS if mode.pop3s else None),
    )
    driver = Driver(session, Work(AUTHENTICATOR, STORE), now=1_700_000_000.0)
    out = bytearray()
    try:
        out += driver.feed()
        for prefix in mode.prefix:
            if driver.closed is None:
                out += driver.feed(prefix)
        for chunk in chunks(data[SESSION_HEADER:], data[3]):
            if driver.closed is not None:
                break
            out += driver.feed(chunk)
        check_responses(bytes(out))
    finally:
        driver.release()
        if driver.committed:
            for user in LAB.users:
                LAB.reset_maildrop(user)


EXPECTED = (
    (State.AUTHORIZATION, False),
    (State.TRANSACTION, False),
    (State.AUTHENTICATING, True),
    (State.AUTHENTICATING, True),
    (State.AUTHORIZATION, False),
    (State.TRANSACTION, False),
    (State.AUTHENTICATING, True),
    (State.TRANSACTION, False),
)


def self_check() -> None:
    """Each mode's prefix reaches its state (with default flags): else the harness would
    fuzz something other than it claims, silently."""
    for number, (mode, (state, mid_auth)) in enumerate(zip(MODES, EXPECTED, strict=True)):
        info = ConnectionInfo("fuzz-1", "1.2", tls=TLS if mode.pop3s else None)
        driver = Driver(Session(settings(0, mode), info), Work(AUTHENTICATOR, STORE))
        try:
            driver.feed()
            for prefix in mode.prefix:
                driver.feed(prefix)
            state_now = driver.session.state
            reached = (state_now, state_now is State.AUTHENTICATING)
        finally:
            driver.release()
        if reached != (state, mid_auth):
            raise RuntimeError(f"mode {number} reached {reached}, not {(state, mid_auth)}")


def main() -> None:
    self_check()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
