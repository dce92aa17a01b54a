"""Records a transcript: runs the C: lines of a script (the transcript format without S:
lines) against a fresh lab server and writes the server's answers as S: lines, with the
parts that vary replaced by placeholders. The output is reviewed by hand before it becomes
a vector in vectors/snapshots/.

    python -m tests.support.record script.txt > vectors/snapshots/name.txt
"""

from __future__ import annotations

import re
import socket
import sys
import tempfile
import time
from pathlib import Path

import pop3d
from tests.support import transcript
from tests.support.lab import Lab, start_server

_SESSION_ID = re.compile(r"SESSIONID=<[^>]+>")


def _drain(sock: socket.socket, quiet: float = 0.3) -> tuple[bytes, bool]:
    data = b""
    sock.settimeout(quiet)
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data, False
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk


def _placeholders(line: str) -> str:
    line = re.sub(r"<\d+\.\d+@[^>\s]+>", "{{challenge}}", line)
    line = _SESSION_ID.sub("SESSIONID=<{{sessionid}}>", line)
    return line.replace(f"pop3d {pop3d.__version__}", "pop3d {{version}}")


def record(script: Path) -> str:
    parsed = transcript.load(script)
    header = [line for line in script.read_text().splitlines() if line.startswith(("#", "!config"))]
    out = list(header)
    with tempfile.TemporaryDirectory() as tmp:
        lab = Lab(Path(tmp) / "lab", extra_config="".join(c + "\n" for c in parsed.config))
        lab.create()
        server = start_server(lab)
        sockets: dict[int, socket.socket] = {}
        challenges: dict[int, bytes] = {}

        def emit(session: int, data: bytes, closed: bool) -> None:
            prefix = f"S{session}" if parsed.sessions != {1} else "S"
            if not data and not closed:
                raise RuntimeError(f"session {session}: no answer within the quiet period")
            for raw in data.split(b"\r\n")[:-1] if data.endswith(b"\r\n") else data.split(b"\r\n"):
                out.append(f"{prefix}: {_placeholders(raw.decode('utf-8', 'replace'))}")
            if closed:
                out.append(f"{prefix}: <EOF>")

        def connect(session: int) -> socket.socket:
            if session not in sockets:
                sockets[session] = socket.create_connection(("127.0.0.1", server.port))
                sockets[session].settimeout(10)
                data = sockets[session].recv(65536)  # the greeting, however long it takes
                more, closed = _drain(sockets[session])
                data += more
                found = re.search(rb"<\d+\.\d+@[^>\s]+>", data)
                challenges[session] = found.group(0) if found else b""
                emit(session, data, closed)
            return sockets[session]

        ending = b"\r\n"
        try:
            for step in parsed.steps:
                if step.kind == "ENDINGS":
                    ending = b"\n" if step.text == "lf" else b"\r\n"
                    out.append(f"!endings {step.text}")
                    continue
                prefix = f"C{step.session}" if parsed.sessions != {1} else "C"
                if step.kind in ("C", "PIPELINE"):
                    sock = connect(step.session)
                    peer = transcript._Peer(sock.sendall, lambda _t: b"")
                    peer.challenge = challenges[step.session]
                    lines = [step.text] if step.kind == "C" else list(step.lines)
                    if step.kind == "PIPELINE":
                        out.append("!pipeline")
                    out += [f"{prefix}: {line}" for line in lines]
                    if step.kind == "PIPELINE":
                        out.append("!end")
                    sock.sendall(b"".join(transcript._client_line(peer, x, ending) for x in lines))
                    time.sleep(0.05)
                    data, closed = _drain(sock)
                    emit(step.session, data, closed)
                elif step.kind == "CLOSE":
                    out.append(f"!close {step.session}")
                    sockets.pop(step.session).close()
                    time.sleep(0.2)
        finally:
            for sock in sockets.values():
                sock.close()
            server.stop()
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(record(Path(sys.argv[1])))
