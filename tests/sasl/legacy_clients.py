"""Independent CRAM-MD5 / DIGEST-MD5 clients for the interoperability tests, each a child
process spoken to over pipes, and a loop that runs one of them against a server mechanism.

* Cyrus SASL (libsasl2 and its client plugins), through ``cyrus_sasl_client.py``: what
  Cyrus's own tools, Thunderbird-era MUAs on Linux and many daemons link against. It hashes
  DIGEST-MD5 in ISO 8859-1 where RFC 2831 §2.1.2.1 says so.
* GNU SASL's ``gsasl`` command (Debian package gsasl), in its stdin/stdout mode: it hashes
  the UTF-8 bytes as they are.

Both check DIGEST-MD5's rspauth, so a server that computes it wrongly fails here.
"""

from __future__ import annotations

import base64
import functools
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pop3d.auth.authenticator import Authenticator
from pop3d.sasl.mechanism import (
    Context,
    Failure,
    Mechanism,
    Success,
)
from tests.support import sasl_run

TIMEOUT = 5.0
CYRUS_SCRIPT = Path(__file__).with_name("cyrus_sasl_client.py")


class ClientError(AssertionError):
    pass


class _Child:
    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self._buffer = b""
        self._deadline = time.monotonic() + TIMEOUT

    def write(self, line: bytes) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(line + b"\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # the client gave up; wait() tells how

    def read_line(self) -> bytes | None:
        """The next line without its newline, or None at end of output."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            left = self._deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.kill()
                raise ClientError(f"client silent for {TIMEOUT} s: {self.process.args!r}")
            data = os.read(fd, 65536)
            if not data:
                return None
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def wait(self) -> tuple[int, str]:
        assert self.process.stdin is not None and self.process.stderr is not None
        if not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except BrokenPipeError:
                pass
        try:
            code = self.process.wait(timeout=max(0.1, self._deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            raise ClientError(f"client did not exit: {self.process.args!r}") from None
        return code, self.process.stderr.read().decode(errors="replace")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


class CyrusClient:
    name = "cyrus-sasl"

    def __init__(
        self,
        mechanism: str,
        host: str,
        user: str,
        password: str,
        *,
        authzid: str = "",
        service: str = "pop",
        realm: str | None = None,  # unused: Cyrus takes the realm from the challenge
    ) -> None:
        del realm
        argv = [
            sys.executable,
            str(CYRUS_SCRIPT),
            "--mechanism",
            mechanism,
            "--host",
            host,
            "--service",
            service,
            "--user",
            user,
            "--password",
            password,
        ]
        if authzid:
            argv += ["--authzid", authzid]
        self.child = _Child(argv)
        self.state, _ = self._status()
        if self.state != "START":
            raise ClientError(f"Cyrus SASL would not start {mechanism}: {self.state}")

    def _status(self) -> tuple[str, bytes]:
        line = self.child.read_line()
        if line is None:
            code, err = self.child.wait()
            raise ClientError(f"Cyrus client exited {code}: {err}")
        word, _, rest = line.decode().partition(" ")
        if word == "FAIL":
            return f"FAIL {rest}", b""
        return word, b"" if rest == "-" else base64.b64decode(rest)

    def respond(self, challenge: bytes) -> bytes:
        self.child.write(base64.b64encode(challenge))
        self.state, data = self._status()
        if self.state.startswith("FAIL"):
            raise ClientError(f"Cyrus client refused the challenge: {self.state}")
        return data

    def accepts(self, final: bytes | None) -> bool:
        """Whether the client is satisfied with how the server ended the exchange."""
        if final is not None:
            self.child.write(base64.b64encode(final))
            self.state, data = self._status()
            if data:
                raise ClientError(f"client answered additional data with {data!r}")
        self.child.wait()
        return self.state == "DONE"


class GsaslClient:
    name = "gsasl"

    def __init__(
        self,
        mechanism: str,
        host: str,
        user: str,
        password: str,
        *,
        authzid: str = "",
        service: str = "pop",
        realm: str | None = None,
    ) -> None:
        argv = [
            "gsasl",
            "--client",
            "--quiet",
            "--no-client-first",
            "--mechanism",
            mechanism,
            "--authentication-id",
            user,
            "--password",
            password,
            "--service",
            service,
            "--hostname",
            host,
            "--realm",
            realm or host,  # without it gsasl asks on stdin
            "--quality-of-protection=qop-auth",
        ]
        if authzid:
            argv += ["--authorization-id", authzid]
        self.child = _Child(argv)
        if self.child.read_line() != mechanism.encode():
            raise ClientError("gsasl did not choose the mechanism")

    def respond(self, challenge: bytes) -> bytes:
        self.child.write(base64.b64encode(challenge))
        line = self.child.read_line()
        if line is None:
            code, err = self.child.wait()
            raise ClientError(f"gsasl exited {code}: {err}")
        return base64.b64decode(line)

    def accepts(self, final: bytes | None) -> bool:
        if final is not None:
            self.child.write(base64.b64encode(final))
            line = self.child.read_line()  # None: it refused (a wrong rspauth)
            if line:
                raise ClientError(f"client answered additional data with {line!r}")
            if line is None:
                self.child.wait()
                return False
        self.child.write(b"")  # the server has nothing more to say
        code, _ = self.child.wait()
        return code == 0


Client = CyrusClient | GsaslClient


def available() -> dict[str, type[CyrusClient] | type[GsaslClient]]:
    """Both clients; scripts/setup.sh --test installs them, so a missing one is an error."""
    from tests.sasl.cyrus_sasl_client import library_path

    if library_path() is None:
        raise ClientError("libsasl2 not found: run scripts/setup.sh --test")
    if not shutil.which("gsasl"):
        raise ClientError("gsasl not found: run scripts/setup.sh --test")
    return {"cyrus-sasl": CyrusClient, "gsasl": GsaslClient}


def exchange(
    mechanism: Mechanism,
    context: Context,
    client: Client,
    authenticator: Authenticator,
    tamper: object = None,
) -> tuple[Success | Failure, bool]:
    """Run the server mechanism against ``client``: (server result, whether the client
    accepted the end of the exchange). ``tamper`` may rewrite each client response."""

    def respond(challenge: bytes) -> bytes:
        value = client.respond(challenge)
        return tamper(value) if callable(tamper) else value

    result = sasl_run.converse(
        mechanism, context, None, respond, functools.partial(sasl_run.carry_out, authenticator)
    )
    assert isinstance(result, Success | Failure)
    if isinstance(result, Failure):
        client.child.kill()
        return result, False
    return result, client.accepts(result.final)
