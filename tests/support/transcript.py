"""C:/S: transcripts: the strict loader and two replayers (``pop3d -X`` over pipes, and
TCP against a running server), each able to send whole lines or one byte at a time.

Format (vectors/snapshots/README.md has the full description)::

    # comment
    !config allowapop: yes         extra imapd.conf line for the lab that runs this transcript
    C: USER alice                  client line (CRLF added); C2: for a second session
    S: +OK ...                     one server line, byte-exact apart from placeholders
    S: <EOF>                       the server closes the connection
    !pipeline / !end               the C: lines between are sent in one write
    !close                         the client closes (the session number follows, default 1)
    !endings lf / !endings crlf    how the following C: lines end (default CRLF)

Placeholders in S: lines: {{challenge}} (an APOP challenge), {{sessionid}}, {{version}};
in C: lines {{apop:SECRET}} is the APOP digest of the greeting's challenge and SECRET, and
{{repeat:X:N}} is N copies of X, {{cr}} a carriage return.
"""

from __future__ import annotations

import hashlib
import os
import re
import select
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pop3d

TRANSCRIPTS = Path(__file__).resolve().parents[2] / "vectors" / "snapshots"
_LINE = re.compile(r"([CS])(\d*): ?(.*)")
_PLACEHOLDER = re.compile(r"\{\{([a-z]+)(?::([^}]*))?\}\}")
_PATTERNS = {
    "challenge": r"<\d+\.\d+@[^>\s]+>",
    "sessionid": r"[A-Za-z0-9._-]+-\d+-\d+-\d+-\d+",
    "any": r".*",
}


class TranscriptError(Exception):
    pass


@dataclass(frozen=True)
class Step:
    kind: str  # "C", "S", "EOF", "CLOSE", "PIPELINE"
    session: int
    text: str = ""
    lines: tuple[str, ...] = ()


@dataclass
class Transcript:
    name: str
    steps: list[Step]
    config: list[str] = field(default_factory=list)

    @property
    def sessions(self) -> set[int]:
        return {step.session for step in self.steps}


def load(path: Path) -> Transcript:
    """Strict: an unknown line is an error, not something to skip."""
    steps: list[Step] = []
    config: list[str] = []
    pipeline: list[str] | None = None
    pipeline_session = 1
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        where = f"{path.name}:{number}"
        if not raw or raw.startswith("#"):
            continue
        if raw.startswith("!config "):
            config.append(raw[len("!config ") :])
            continue
        if raw == "!pipeline":
            pipeline = []
            continue
        if raw == "!end":
            if pipeline is None:
                raise TranscriptError(f"{where}: !end without !pipeline")
            steps.append(Step("PIPELINE", pipeline_session, lines=tuple(pipeline)))
            pipeline = None
            continue
        if raw in ("!endings lf", "!endings crlf"):
            steps.append(Step("ENDINGS", 1, raw.split()[1]))
            continue
        if raw.startswith("!close"):
            steps.append(Step("CLOSE", int(raw[len("!close") :].strip() or 1)))
            continue
        match = _LINE.fullmatch(raw)
        if not match:
            raise TranscriptError(f"{where}: cannot parse {raw!r}")
        kind, session_text, text = match.groups()
        session = int(session_text or 1)
        if kind == "C" and pipeline is not None:
            pipeline.append(text)
            pipeline_session = session
        elif kind == "S" and text == "<EOF>":
            steps.append(Step("EOF", session))
        else:
            steps.append(Step(kind, session, text))
    if pipeline is not None:
        raise TranscriptError(f"{path.name}: !pipeline not closed")
    return Transcript(path.stem, steps, config)


def all_transcripts() -> list[Path]:
    return sorted(TRANSCRIPTS.glob("*.txt"))


def expectation(text: str) -> re.Pattern[bytes]:
    parts: list[str] = []
    position = 0
    for match in _PLACEHOLDER.finditer(text):
        parts.append(re.escape(text[position : match.start()]))
        name = match.group(1)
        if name == "version":
            parts.append(re.escape(pop3d.__version__))
        elif name in _PATTERNS:
            parts.append(_PATTERNS[name])
        else:
            raise TranscriptError(f"unknown placeholder {match.group(0)}")
        position = match.end()
    parts.append(re.escape(text[position:]))
    return re.compile(("".join(parts)).encode("utf-8") + rb"\r\n", re.DOTALL)


_CHALLENGE = re.compile(rb"<\d+\.\d+@[^>\s]+>")


class _Peer:
    """One client connection: write bytes, read CRLF lines, all with deadlines."""

    def __init__(self, write: Callable[[bytes], None], read: Callable[[float], bytes]) -> None:
        self._write = write
        self._read = read
        self._buffer = b""
        self.challenge = b""

    def send(self, data: bytes, byte_at_a_time: bool) -> None:
        if byte_at_a_time:
            for i in range(len(data)):
                self._write(data[i : i + 1])
        else:
            self._write(data)

    def line(self, timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TranscriptError(f"no complete line within {timeout}s; have {self._buffer!r}")
            chunk = self._read(remaining)
            if not chunk:
                raise TranscriptError(f"connection closed; have {self._buffer!r}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        line += b"\n"
        if not self.challenge:
            found = _CHALLENGE.search(line)
            if found:
                self.challenge = found.group(0)
        return line

    def eof(self, timeout: float = 10.0) -> None:
        if self._buffer:
            raise TranscriptError(f"expected EOF, have {self._buffer!r}")
        chunk = self._read(timeout)
        if chunk:
            raise TranscriptError(f"expected EOF, got {chunk!r}")


def _client_line(peer: _Peer, text: str, ending: bytes = b"\r\n") -> bytes:
    def substitute(match: re.Match[str]) -> str:
        name, argument = match.group(1), match.group(2) or ""
        if name == "apop":
            secret = argument.encode()
            return hashlib.md5(peer.challenge + secret, usedforsecurity=False).hexdigest()
        if name == "cr":
            return "\r"
        if name == "repeat":  # {{repeat:x:10000}}: a long line without a long file line
            char, _, count = argument.partition(":")
            return char * int(count)
        raise TranscriptError(f"unknown client placeholder {match.group(0)}")

    return _PLACEHOLDER.sub(substitute, text).encode("utf-8") + ending


def _run(
    transcript: Transcript,
    peers: Callable[[int], _Peer],
    byte_at_a_time: bool,
    close: Callable[[int], None],
) -> None:
    ending = b"\r\n"
    for index, step in enumerate(transcript.steps):
        where = f"{transcript.name} step {index + 1}"
        if step.kind == "ENDINGS":
            ending = b"\n" if step.text == "lf" else b"\r\n"
            continue
        peer = peers(step.session)
        if step.kind == "C":
            peer.send(_client_line(peer, step.text, ending), byte_at_a_time)
        elif step.kind == "PIPELINE":
            data = b"".join(_client_line(peer, line, ending) for line in step.lines)
            peer.send(data, byte_at_a_time)
        elif step.kind == "S":
            got = peer.line()
            if not expectation(step.text).fullmatch(got):
                raise TranscriptError(f"{where}: expected {step.text!r}, got {got!r}")
        elif step.kind == "EOF":
            try:
                peer.eof()
            except TranscriptError as exc:
                raise TranscriptError(f"{where}: {exc}") from None
        elif step.kind == "CLOSE":
            close(step.session)


def replay_tcp(transcript: Transcript, port: int, byte_at_a_time: bool = False) -> None:
    sockets: dict[int, socket.socket] = {}
    peers: dict[int, _Peer] = {}

    def peer(session: int) -> _Peer:
        if session not in peers:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sockets[session] = sock

            def read(timeout: float, sock: socket.socket = sock) -> bytes:
                sock.settimeout(timeout)
                try:
                    return sock.recv(65536)
                except TimeoutError:
                    raise TranscriptError("timed out waiting for the server") from None
                except ConnectionResetError:
                    return b""

            peers[session] = _Peer(sock.sendall, read)
        return peers[session]

    def close(session: int) -> None:
        # Half-close and wait for the server to close its side: by then it has released
        # the maildrop, so the next session of the transcript cannot race the unlock.
        sock = sockets.pop(session)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        try:
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        sock.close()

    try:
        _run(transcript, peer, byte_at_a_time, close)
    finally:
        for sock in sockets.values():
            sock.close()


def replay_stdio(transcript: Transcript, argv: list[str], byte_at_a_time: bool = False) -> None:
    if transcript.sessions != {1}:
        raise TranscriptError(f"{transcript.name}: -X serves one session only")
    process = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdin is not None and process.stdout is not None
    stdin_fd = process.stdin.fileno()
    stdout_fd = process.stdout.fileno()

    def write(data: bytes) -> None:
        os.write(stdin_fd, data)

    def read(timeout: float) -> bytes:
        ready, _, _ = select.select([stdout_fd], [], [], timeout)
        if not ready:
            raise TranscriptError("timed out waiting for pop3d -X")
        return os.read(stdout_fd, 65536)

    def close(_session: int) -> None:
        process.stdin.close()  # type: ignore[union-attr]

    peer = _Peer(write, read)
    try:
        _run(transcript, lambda _session: peer, byte_at_a_time, close)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        process.stdout.close()
        if process.stderr:
            process.stderr.close()
        if not process.stdin.closed:
            process.stdin.close()
