"""The floor under pop3d's CPU per session: an asyncio server that answers the load
generator's sessions (greeting, USER, PASS, STAT, RETR 1, QUIT) with canned lines and
nothing else: no parsing beyond a line split, no login, no maildrop, no log, no audit.
What it costs per session is what asyncio's loop, its transports and the kernel's
loopback TCP cost for that exchange on this machine; pop3d's own work is the rest.

    floor.py --port P --tls-port Q --message FILE --cert C --key K

Plain on ``--port``, implicit TLS (asyncio's own ``ssl`` transport, as pop3d had before
transport/tls_layer.py) on ``--tls-port``. ``profile.py cpu --floor`` runs it beside the
checkouts it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
from pathlib import Path


def retr_answer(message: bytes) -> bytes:
    """RETR's answer: the message with CRLF line ends, dot-stuffed, then the final dot."""
    lines = message.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    body = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    return b"+OK message follows\r\n" + body + b".\r\n"


class Canned(asyncio.Protocol):
    answers: dict[bytes, bytes] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""
        transport.write(b"+OK floor ready\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            verb = line.split(b" ", 1)[0].upper()
            self.transport.write(self.answers.get(verb, b"-ERR unknown command\r\n"))
            if verb == b"QUIT":
                self.transport.close()
                return


async def serve(args: argparse.Namespace) -> None:
    message = Path(args.message).read_bytes()
    size = len(retr_answer(message)) - len(b"+OK message follows\r\n") - len(b".\r\n")
    Canned.answers = {
        b"USER": b"+OK\r\n",
        b"PASS": b"+OK logged in\r\n",
        b"STAT": f"+OK 1 {size}\r\n".encode(),
        b"RETR": retr_answer(message),
        b"NOOP": b"+OK\r\n",
        b"QUIT": b"+OK bye\r\n",
    }
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    loop = asyncio.get_running_loop()
    await loop.create_server(Canned, "127.0.0.1", args.port, backlog=1024)
    await loop.create_server(Canned, "127.0.0.1", args.tls_port, ssl=context, backlog=1024)
    print("ready", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls-port", type=int, required=True)
    parser.add_argument("--message", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
