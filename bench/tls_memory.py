"""What one server-side TLS connection holds in malloc'd memory, in the OpenSSL that pop3d
uses (the one bundled with ``cryptography``, through pyOpenSSL) and in the system's
(Debian's ``libssl.so.3``, through Python's ``ssl``): a figure that says how much of an idle
pop3s connection's RSS is the TLS library's own state, apart from pop3d.

    PYTHONPATH=. python bench/tls_memory.py [--count 1000]

For each library, ``count`` server connections over memory BIOs, each first as created
(``SSL_new`` and its BIOs), then after a full TLS 1.3 handshake against Python's client and
one record each way, with the record buffers released while idle (both set
``SSL_MODE_RELEASE_BUFFERS``). glibc's ``mallinfo2`` counts the bytes in use before and
after the connections are dropped; the client's objects are kept apart (dropped later).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import ssl
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from OpenSSL import SSL

from pop3d.config import imapd
from pop3d.transport import selfsigned, tls
from pop3d.transport.tls_layer import TLSLayer


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks "
        "keepcost".split()
    ]


_libc = ctypes.CDLL(None)
_libc.mallinfo2.restype = _MallInfo2


def _in_use() -> int:
    info = _libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def _per_connection(make: Callable[[], Any], count: int) -> float:
    """KiB freed per object when ``count`` objects made by ``make`` are dropped."""
    for _ in range(5):  # allocator and library caches settle first
        make()
    kept = [make() for _ in range(count)]
    gc.collect()
    before = _in_use()
    del kept[:]
    gc.collect()
    return (before - _in_use()) / count / 1024


class _Peer:
    """Python's TLS client on memory BIOs, the other end of one server connection."""

    def __init__(self, client: ssl.SSLContext) -> None:
        self.from_server, self.from_client = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.side = client.wrap_bio(self.from_server, self.from_client, server_hostname="localhost")
        self.done = False

    def step(self) -> bytes:
        if not self.done:
            try:
                self.side.do_handshake()
                self.done = True
            except ssl.SSLWantReadError:
                pass
        return self.from_client.read()


def _bundled(context: SSL.Context, client: ssl.SSLContext, peers: list[_Peer]) -> TLSLayer:
    layer = TLSLayer(context)
    peer = _Peer(client)
    peers.append(peer)
    for _ in range(10):
        data = peer.step()
        if data or not layer.handshake_done:
            layer.handshake(data)
            peer.from_server.write(layer.outgoing())
        if peer.done and layer.handshake_done:
            break
    peer.from_server.write(layer.wrap(b"+OK\r\n"))
    peer.side.read(100)
    peer.side.write(b"NOOP\r\n")
    layer.unwrap(peer.from_client.read())
    return layer


def _system(
    context: ssl.SSLContext, client: ssl.SSLContext, peers: list[_Peer]
) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = context.wrap_bio(incoming, outgoing, server_side=True)
    peer = _Peer(client)
    peers.append(peer)
    server_done = False
    for _ in range(10):
        incoming.write(peer.step())
        if not server_done:
            try:
                server.do_handshake()
                server_done = True
            except ssl.SSLWantReadError:
                pass
        peer.from_server.write(outgoing.read())
        if peer.done and server_done:
            break
    server.write(b"+OK\r\n")
    peer.from_server.write(outgoing.read())
    peer.side.read(100)
    peer.side.write(b"NOOP\r\n")
    incoming.write(peer.from_client.read())
    server.read(100)
    return server, incoming, outgoing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        authority = selfsigned.make_ca("bench CA")
        authority.write(Path(folder) / "ca.pem")
        issued = selfsigned.issue(
            authority, "localhost", dns_names=("localhost",), ip_addresses=("127.0.0.1",)
        )
        cert, key = f"{folder}/cert.pem", f"{folder}/key.pem"
        issued.write(Path(cert), Path(key))
        config = imapd.from_text(f"tls_server_cert: {cert}\ntls_server_key: {key}\n", "imapd.conf")
        bundled = tls.server_tls(config, None).context
        system = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        system.load_cert_chain(cert, key)
        client = ssl.create_default_context(cafile=f"{folder}/ca.pem")
        peers: list[_Peer] = []
        figures = {
            "bundled": SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(),
            "bundled_new_kib": _per_connection(lambda: SSL.Connection(bundled, None), args.count),
            "bundled_idle_kib": _per_connection(
                lambda: _bundled(bundled, client, peers), args.count
            ),
            "system": ssl.OPENSSL_VERSION,
            "system_new_kib": _per_connection(
                lambda: system.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True),
                args.count,
            ),
            "system_idle_kib": _per_connection(lambda: _system(system, client, peers), args.count),
        }
    print(
        json.dumps({key: round(v, 2) if isinstance(v, float) else v for key, v in figures.items()})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
