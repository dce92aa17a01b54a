"""Shared pieces of the interoperability tests: servers with both POP3 (STLS offered) and
POP3S, the canonical form of a stored message, and a subprocess runner with a timeout.

The servers are shared per xdist worker (see :func:`served`); tests that need their own
configuration start their own with :func:`tests.support.lab.start_server`.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.lab import Lab, Server, start_server

CLIENT_TIMEOUT = 30.0
BOTH = {"pop3": "", "pop3s": "-s"}

# What LIST reports for alice and bob (canonical sizes, vectors/maildrops/generate.py).
ALICE_SIZES = [1000, 700, 800, 900, 5000, 20000, 300]
BOB_SIZES = [1000, 2000, 3000]


def canonical(message: Path) -> bytes:
    """What RETR sends for a stored file before dot-stuffing: CRLF line ends, and a final
    CRLF added when the file does not end with a newline."""
    data = message.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def uid(message: Path) -> str:
    """The UIDL of a Maildir file: the unique part of its name."""
    return message.name.split(",")[0].split(":")[0]


def run(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
    timeout: float = CLIENT_TIMEOUT,
) -> subprocess.CompletedProcess[bytes]:
    """Run a client to completion; never waits longer than ``timeout``."""
    return subprocess.run(
        list(argv),
        input=input if input is not None else b"",
        capture_output=True,
        env=dict(os.environ, LC_ALL="C", LANG="C") if env is None else env,
        timeout=timeout,
        check=False,
    )


@dataclass
class Served:
    """A shared server as one test sees it: maildrops fresh from the lab, and the server log
    from the start of the test on."""

    server: Server
    mark: int  # size of the log when the test started

    @property
    def lab(self) -> Lab:
        return self.server.lab

    @property
    def port(self) -> int:
        return self.server.ports["pop3"]

    @property
    def pop3s(self) -> int:
        return self.server.ports["pop3s"]

    @property
    def ca(self) -> Path:
        assert self.lab.tls is not None
        return self.lab.tls.ca

    def log(self) -> str:
        with self.server.log.open("rb") as handle:
            handle.seek(self.mark)
            return handle.read().decode(errors="replace")

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 10.0) -> str:
        """The log once ``text`` is in it ``count`` times (or ``timeout`` passed): the server
        writes some lines, such as the end of a session, after the client has gone."""
        deadline = time.monotonic() + timeout
        while (log := self.log()).count(text) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return log


def _fresh(server: Server) -> Served:
    for user in server.lab.users:
        server.lab.reset_maildrop(user)
    return Served(server, server.log.stat().st_size)


@pytest.fixture(scope="session")
def _shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    lab = Lab(tmp_path_factory.mktemp("interop") / "lab").create(with_tls=True)
    running = start_server(lab, BOTH)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def _shared_server_without_apop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # No SASL mechanism in CAPA, so curl logs in with USER/PASS: EXTERNAL is offered only
    # with a client certificate (an empty sasl_mech_list is an error, as in Cyrus).
    lab = Lab(
        tmp_path_factory.mktemp("interop") / "lab",
        extra_config="allowapop: no\nsasl_mech_list: EXTERNAL\n",
    ).create()
    running = start_server(lab)
    yield running
    running.stop()


@pytest.fixture
def served(_shared_server: Server) -> Served:
    """POP3 offering STLS on ``port`` and POP3S on ``pop3s``, lab config, TLS certificates
    from the lab CA (``ca``). One server per xdist worker (starting one costs about half a
    second of CPU); each test gets the maildrops reset. A session a failed test left open
    holds the lock of a Maildir that no longer exists, so it cannot disturb the next test."""
    return _fresh(_shared_server)


@pytest.fixture
def served_without_apop(_shared_server_without_apop: Server) -> Served:
    """POP3 without TLS, with ``allowapop: no`` and no SASL mechanism: the greeting carries
    no challenge and CAPA no SASL line, so curl falls back to USER/PASS."""
    return _fresh(_shared_server_without_apop)


@pytest.fixture
def client_context(served: Served) -> ssl.SSLContext:
    """A client context that trusts only the lab CA."""
    return ssl.create_default_context(cafile=str(served.ca))
