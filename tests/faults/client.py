"""A POP3 client for the fault-injection tests: plain sockets, a reset instead of a close
when asked (the client vanishing), and the server log read from a mark onwards."""

from __future__ import annotations

import re
import socket
import ssl
import struct
import time
from pathlib import Path

from tests.support.lab import Server

# Tests that make the server's own files unreadable run it without the capabilities that
# let root ignore file modes (a worker inherits them from the master).
WITHOUT_DAC_OVERRIDE = ("setpriv", "--bounding-set=-dac_override,-dac_read_search")


class Pop:
    def __init__(self, port: int, timeout: float = 20.0, tls: ssl.SSLContext | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls is not None:  # pop3s
            self.sock = tls.wrap_socket(self.sock, server_hostname="localhost")
        self.buffer = b""
        self.port = self.sock.getsockname()[1]  # the server logs us as peer=127.0.0.1:port
        self.greeting = self.line()

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed by the server; had {self.buffer!r}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def ask(self, command: bytes) -> bytes:
        self.send(command + b"\r\n")
        return self.line()

    def multiline(self) -> list[bytes]:
        lines = []
        while (line := self.line()) != b".":
            lines.append(line)
        return lines

    def login(self, user: bytes = b"bob", password: bytes = b"builder") -> bytes:
        assert self.ask(b"USER " + user).startswith(b"+OK")
        return self.ask(b"PASS " + password)

    def stat(self) -> tuple[int, int]:
        reply = self.ask(b"STAT")
        assert reply.startswith(b"+OK "), reply
        count, size = reply.split()[1:3]
        return int(count), int(size)

    def reset(self) -> None:
        """Vanish: close with SO_LINGER 0, so the server gets a RST, not a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


class LogWatch:
    """The server log from the moment of creation on."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.start = len(server.log.read_bytes())

    def text(self) -> str:
        return self.server.log.read_bytes()[self.start :].decode(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.text(), re.M)
            if found:
                return found
            assert time.monotonic() < deadline, f"no {pattern!r} in:\n{self.text()}"
            time.sleep(0.02)

    def ended(self, client: Pop, timeout: float = 10.0) -> str:
        """How the server says the client's session ended (waits for the line)."""
        match = self.wait_for(rf"peer=127\.0\.0\.1:{client.port} ended: (.*)$", timeout)
        return match.group(1)


def files(maildir: Path) -> dict[str, bytes]:
    """Every message file of a Maildir (new/ and cur/), by unique name, with its content."""
    found = {}
    for sub in ("new", "cur"):
        for path in (maildir / sub).iterdir():
            found[path.name.split(",")[0].split(":")[0]] = path.read_bytes()
    return found


def worker_pid(server: Server) -> int:
    """The only worker of a one-service, prefork=1 server; waits for it to exist."""
    path = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
    deadline = time.monotonic() + 20
    while True:
        pids = path.read_text().split()
        if len(pids) == 1:
            return int(pids[0])
        assert server.process.poll() is None, server.log_text()
        assert time.monotonic() < deadline, pids
        time.sleep(0.02)
