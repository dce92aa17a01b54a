"""The server's CPU for one TLS handshake, full and resumed: pop3d's TLS layer
(transport/tls_layer.py, the context of transport/tls.py from a bench-like imapd.conf)
against Python's ssl client, joined by memory BIOs in this process; only the time spent in
the server's calls is counted (thread CPU time). A figure the load generator and the rest
of the machine cannot distort, beside the bench's server CPU per session.

    PYTHONPATH=. python bench/tls_resume_cost.py [--count 300] [--rsa]

The certificate is the bench's (ECDSA P-256, pop3d.transport.selfsigned), or with ``--rsa``
a self-signed RSA-2048 one made by ``openssl req``: what a resumption saves is mostly the
certificate's signature, cheap with ECDSA, dear with RSA.
"""

from __future__ import annotations

import argparse
import json
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pop3d.config import imapd
from pop3d.transport import selfsigned, tls
from pop3d.transport.tls_layer import TLSLayer


def handshake(
    server: tls.ServerTLS, client: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[float, bool, ssl.SSLSession | None]:
    """One handshake and the first record after it (which carries TLS 1.3's tickets);
    the server's CPU seconds, whether it resumed, the client's session."""
    spent = 0.0
    layer = TLSLayer(server.context)
    from_server, from_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_side = client.wrap_bio(
        from_server, from_client, server_hostname="localhost", session=session
    )
    client_done = False
    for _ in range(10):
        if not client_done:
            try:
                client_side.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
        to_server = from_client.read()
        if to_server or not layer.handshake_done:
            started = time.thread_time()
            layer.handshake(to_server)
            out = layer.outgoing()
            spent += time.thread_time() - started
            from_server.write(out)
        if client_done and layer.handshake_done:
            started = time.thread_time()
            greeting = layer.wrap(b"+OK\r\n")
            spent += time.thread_time() - started
            from_server.write(greeting)
            client_side.read(5)
            return spent, client_side.session_reused, client_side.session
    raise RuntimeError("handshake did not finish")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--rsa", action="store_true", help="an RSA-2048 certificate")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        if args.rsa:
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                 "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                 "-keyout", f"{folder}/key.pem", "-out", f"{folder}/cert.pem"],
                check=True,
                capture_output=True,
            )  # fmt: skip
            Path(folder, "ca.pem").write_bytes(Path(folder, "cert.pem").read_bytes())
        else:
            ca = selfsigned.make_ca("bench CA")
            ca.write(Path(folder) / "ca.pem")
            certificate = selfsigned.issue(
                ca, "localhost", dns_names=("localhost",), ip_addresses=("127.0.0.1",)
            )
            certificate.write(Path(folder) / "cert.pem", Path(folder) / "key.pem")
        config = imapd.from_text(
            f"tls_server_cert: {folder}/cert.pem\ntls_server_key: {folder}/key.pem\n",
            "imapd.conf",
        )
        server = tls.server_tls(config, None)
        client = ssl.create_default_context(cafile=f"{folder}/ca.pem")
        full: list[float] = []
        resumed: list[float] = []
        session = None
        for _ in range(args.count):
            spent, _reused, _ = handshake(server, client, None)
            full.append(spent)
            spent, reused, session = handshake(server, client, session)
            if reused:
                resumed.append(spent)
    result = {
        "certificate": "RSA-2048" if args.rsa else "ECDSA P-256",
        "count": args.count,
        "full_ms_median": statistics.median(full) * 1000,
        "resumed_ms_median": statistics.median(resumed) * 1000 if resumed else None,
        "resumed": len(resumed),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
