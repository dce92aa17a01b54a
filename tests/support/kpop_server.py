"""A throwaway KPOP server for tests and for recording vectors: the real handshake
(:class:`~pop3d.kpop.handshake.Handshake` with the MIT acceptor), then a canned POP3
dialogue over a fixed list of messages. It exists to prove the fetchmail harness and to
capture fetchmail's bytes, not to be pop3d: one thread, one connection at a time.

After the handshake it follows Cyrus's KPOP rules: ``USER`` must name the ticket's mapped
user (:func:`~pop3d.kerberos.names.local_user`), ``PASS`` is then accepted whatever it says.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

from pop3d.kerberos.names import local_user
from pop3d.kpop.handshake import Authenticated, Handshake, Verifier
from tests.support.kpop import Outcome, drive_socket


@dataclass
class Session:
    outcome: Outcome | None = None
    commands: list[bytes] = field(default_factory=list)
    deleted: set[int] = field(default_factory=set)
    logged_in: str | None = None


class CannedKpopServer:
    def __init__(
        self, verify: Verifier, messages: list[bytes], login_realms: tuple[str, ...] = ()
    ) -> None:
        self.verify = verify
        self.messages = [m.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") for m in messages]
        self.login_realms = login_realms
        self.sessions: list[Session] = []
        self.removed: set[int] = set()  # deletions committed by a QUIT
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port: int = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> CannedKpopServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(20)
                session = Session()
                self.sessions.append(session)
                try:
                    self._session(conn, session)
                except OSError:
                    pass

    def _session(self, conn: socket.socket, session: Session) -> None:
        session.outcome = outcome = drive_socket(Handshake(self.verify), conn)
        result = outcome.result
        if not isinstance(result, Authenticated):
            return
        allowed = local_user(result.principal, result.default_realm, self.login_realms)
        conn.sendall(b"+OK KPOP test server ready\r\n")
        pending = outcome.trailing
        user: str | None = None
        while True:
            while b"\r\n" not in pending:
                data = conn.recv(4096)
                if not data:
                    return
                pending += data
            line, _, pending = pending.partition(b"\r\n")
            session.commands.append(line)
            verb, _, argument = line.decode("utf-8", "replace").partition(" ")
            reply = self._answer(session, verb.upper(), argument, allowed, user)
            if verb.upper() == "USER" and reply.startswith(b"+OK"):
                user = argument
            conn.sendall(reply)
            if verb.upper() == "QUIT":
                if session.logged_in is not None:
                    self.removed |= session.deleted
                return

    def _answer(
        self, session: Session, verb: str, argument: str, allowed: str | None, user: str | None
    ) -> bytes:
        gone = self.removed | session.deleted
        live = [i for i in range(len(self.messages)) if i not in gone]
        if verb == "CAPA":
            return b"+OK\r\nUSER\r\nUIDL\r\nTOP\r\n.\r\n"
        if verb == "QUIT":
            return b"+OK bye\r\n"
        if session.logged_in is None:
            if verb == "USER":
                return b"+OK\r\n" if allowed is not None and argument == allowed else b"-ERR\r\n"
            if verb == "PASS" and user is not None:
                session.logged_in = user
                return b"+OK logged in by Kerberos ticket\r\n"
            return b"-ERR not logged in\r\n"
        size = sum(len(self.messages[i]) for i in live)
        words = argument.split()
        number = int(words[0]) - 1 if words and words[0].isdigit() else None
        if number is not None and number not in live:
            return b"-ERR no such message\r\n"
        if verb == "STAT":
            return f"+OK {len(live)} {size}\r\n".encode()
        if verb in {"LIST", "UIDL"}:

            def item(i: int) -> str:
                return f"{i + 1} {len(self.messages[i]) if verb == 'LIST' else f'uid{i + 1}'}"

            if number is not None:
                return f"+OK {item(number)}\r\n".encode()
            return ("+OK\r\n" + "".join(item(i) + "\r\n" for i in live) + ".\r\n").encode()
        if verb in {"RETR", "TOP"} and number is not None:
            body = self.messages[number]
            stuffed = b"\r\n".join(
                b"." + line if line.startswith(b".") else line for line in body.split(b"\r\n")
            )
            return b"+OK\r\n" + stuffed + (b"" if stuffed.endswith(b"\r\n") else b"\r\n") + b".\r\n"
        if verb == "DELE" and number is not None:
            session.deleted.add(number)
            return b"+OK\r\n"
        if verb in {"NOOP", "RSET"}:
            if verb == "RSET":
                session.deleted.clear()
            return b"+OK\r\n"
        return b"-ERR unknown command\r\n"
