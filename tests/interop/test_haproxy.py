"""pop3d -H behind a real HAProxy (Debian's 2.6, started in the foreground on loopback):
the PROXY headers HAProxy itself writes, v1 and v2 with every TLV it can add, in front of
plain POP3, STLS and pop3s passed through; HAProxy terminating TLS (its TLVs say so, and
pop3d must not take their word for it: only ``-p`` makes the hop count as protected); and
HAProxy's health checks, which must find the server up without looking like failed logins.

The clients connect from 127.0.0.7 and 127.0.0.8, HAProxy to pop3d from 127.0.0.5, so
the address in pop3d's log tells whose it is."""

from __future__ import annotations

import csv
import io
import poplib
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.lab import Lab, Server, free_port, start_server

pytestmark = pytest.mark.interop

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
CLIENT = "127.0.0.7"
TLS_CLIENT = "127.0.0.8"
# HAProxy connects to pop3d from here, and checks that its frontends listen from there
PROXY = "127.0.0.5"
PROBE = "127.0.0.9"
# HAProxy's TLVs after a v2 header: everything 2.6 can send, so pop3d's parser meets them
V2_OPTIONS = "ssl,cert-cn,ssl-cipher,cert-sig,cert-key,authority,crc32c,unique-id"


class FromAddress(poplib.POP3):
    """poplib connecting from a chosen loopback address."""

    def __init__(self, host: str, port: int, source: str) -> None:
        self._source = source
        super().__init__(host, port, timeout=15)

    def _create_socket(self, timeout: float) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout, (self._source, 0))


class TLSFromAddress(poplib.POP3_SSL):
    def __init__(self, host: str, port: int, source: str, context: ssl.SSLContext) -> None:
        self._source = source
        self._tls = context
        super().__init__(host, port, timeout=15, context=context)

    def _create_socket(self, timeout: float) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout, (self._source, 0))
        return self._tls.wrap_socket(sock, server_hostname="localhost")


@dataclass
class Haproxy:
    process: subprocess.Popen[bytes]
    ports: dict[str, int]
    stats: Path
    output: Path

    def server_status(self, backend: str) -> dict[str, str]:
        """The row of ``show stat`` for the backend's one server."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats))
            sock.sendall(b"show stat\n")
            text = b""
            while chunk := sock.recv(65536):
                text += chunk
        rows = csv.DictReader(io.StringIO(text.decode().lstrip("# ")))
        for row in rows:
            if row["pxname"] == backend and row["svname"] == "pop3d":
                # "* L7OK": the last check's result, the next one under way
                row["check_status"] = row["check_status"].removeprefix("* ")
                return dict(row)
        raise AssertionError(f"no server row for {backend}: {text!r}")


def start_haproxy(folder: Path, backends: dict[str, str], terminate_tls: bool = False) -> Haproxy:
    """One frontend per backend; ``backends`` maps a name to the backend's lines, the last
    its ``server`` line's target and options. With ``terminate_tls`` every frontend ends
    TLS with the certificate in ``folder/haproxy.pem``."""
    folder.mkdir(parents=True, exist_ok=True)
    stats = folder / "stats.sock"
    ports = {name: free_port() for name in backends}
    lines = [
        "global",
        f"    stats socket {stats} mode 600 level admin",
        "    maxconn 200",
        "defaults",
        "    mode tcp",
        "    timeout connect 5s",
        "    timeout client 30s",
        "    timeout server 30s",
    ]
    for name, server in backends.items():
        bind = f"127.0.0.1:{ports[name]}"
        if terminate_tls:
            bind += f" ssl crt {folder / 'haproxy.pem'}"
        lines += [f"frontend fe_{name}", f"    bind {bind}", f"    default_backend {name}"]
        lines += ["    unique-id-format %{+X}o%ci:%cp", f"backend {name}", f"    source {PROXY}"]
        *before, target = server.split("\n")
        lines += [f"    {line}" for line in before] + [f"    server pop3d {target}"]
    config = folder / "haproxy.cfg"
    config.write_text("\n".join(lines) + "\n")
    output = folder / "haproxy.out"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(config)], stdout=sink, stderr=subprocess.STDOUT
        )
    proxy = Haproxy(process, ports, stats, output)
    deadline = time.monotonic() + 15
    for port in ports.values():
        while True:
            assert process.poll() is None, output.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), 1, (PROBE, 0)).close()
                break
            except OSError:
                assert time.monotonic() < deadline, output.read_text()
                time.sleep(0.05)
    return proxy


@pytest.fixture
def proxied(tls_lab: Lab) -> Iterator[tuple[Server, Path]]:
    assert tls_lab.tls is not None
    server = start_server(tls_lab, {"pop3": "-H", "pop3s": "-H -s"})
    try:
        yield server, tls_lab.tls.ca
    finally:
        server.stop()


def stop(proxy: Haproxy) -> None:
    proxy.process.terminate()
    try:
        proxy.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proxy.process.kill()
        proxy.process.wait()


def log_in(box: poplib.POP3) -> tuple[int, int]:
    box.user("alice")
    box.pass_("wonderland")
    count, size = box.stat()
    box.quit()
    return count, size


def test_haproxy_v1_and_v2_headers_name_the_client(proxied: tuple[Server, Path]) -> None:
    server, ca = proxied
    pop3, pop3s = server.ports["pop3"], server.ports["pop3s"]
    proxy = start_haproxy(
        server.lab.root / "haproxy",
        {
            "v1": f"127.0.0.1:{pop3} send-proxy",
            "v2": f"127.0.0.1:{pop3} send-proxy-v2 proxy-v2-options {V2_OPTIONS}",
            "pop3s": f"127.0.0.1:{pop3s} send-proxy-v2 proxy-v2-options {V2_OPTIONS}",
        },
    )
    context = ssl.create_default_context(cafile=str(ca))
    try:
        seen = []
        for name in ("v1", "v2"):
            box = FromAddress("127.0.0.1", proxy.ports[name], CLIENT)
            seen.append(box.sock.getsockname()[1])
            assert log_in(box)[0] > 0
        # STLS after a v1 header: the header is not part of what TLS protects
        box = FromAddress("127.0.0.1", proxy.ports["v1"], CLIENT)
        seen.append(box.sock.getsockname()[1])
        box.stls(context)
        assert log_in(box)[0] > 0
        # pop3s passed through: the v2 header and its TLVs, then the ClientHello
        tls_box = TLSFromAddress("127.0.0.1", proxy.ports["pop3s"], TLS_CLIENT, context)
        tls_port = tls_box.sock.getsockname()[1]
        assert log_in(tls_box)[0] > 0
    finally:
        stop(proxy)
    log = server.log_text()
    for port in seen:
        assert f"peer={CLIENT}:{port}" in log, log
    assert f"peer={TLS_CLIENT}:{tls_port} TLS" in log, log
    # HAProxy's own address is nowhere: neither as a peer nor in a refused header
    assert PROXY not in log, log


def test_tls_ended_at_haproxy_counts_only_with_p(tls_lab: Lab) -> None:
    """HAProxy terminates TLS and says so in its v2 TLVs (PP2_TYPE_SSL, the client's
    certificate name): pop3d does not believe a header, so with ``allowplaintext: no`` a
    password is refused on that hop, and accepted where the operator vouches for it with
    ``-p``."""
    assert tls_lab.tls is not None
    tls_lab.configure("allowplaintext: no\n")
    folder = tls_lab.root / "haproxy"
    folder.mkdir()
    (folder / "haproxy.pem").write_bytes(
        tls_lab.tls.cert.read_bytes() + tls_lab.tls.key.read_bytes()
    )
    context = ssl.create_default_context(cafile=str(tls_lab.tls.ca))
    options = f"send-proxy-v2-ssl-cn proxy-v2-options {V2_OPTIONS}"
    server = start_server(tls_lab, {"pop3": "-H", "trusted": "-H -p 128"})
    try:
        proxy = start_haproxy(
            folder,
            {
                "untrusted": f"127.0.0.1:{server.ports['pop3']} {options}",
                "trusted": f"127.0.0.1:{server.ports['trusted']} {options}",
            },
            terminate_tls=True,
        )
        try:
            box = TLSFromAddress("127.0.0.1", proxy.ports["untrusted"], TLS_CLIENT, context)
            assert "USER" not in box.capa()
            with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\]"):
                box.user("alice")
            box.quit()
            box = TLSFromAddress("127.0.0.1", proxy.ports["trusted"], TLS_CLIENT, context)
            assert "USER" in box.capa()
            assert log_in(box)[0] > 0
        finally:
            stop(proxy)
    finally:
        server.stop()
    log = server.log_text()
    assert f"peer={TLS_CLIENT}:" in log
    assert "Traceback" not in log


def test_haproxy_health_checks_find_it_up_and_are_no_failed_logins(
    proxied: tuple[Server, Path],
) -> None:
    """HAProxy's usual POP3 check (connect with the PROXY header, expect the greeting,
    hang up), on plain POP3 with v1 and v2 headers and on pop3s: every check passes and
    none is taken for a login attempt or a fault."""
    server, _ca = proxied
    pop3, pop3s = server.ports["pop3"], server.ports["pop3s"]
    check = "option tcp-check\ntcp-check expect string +OK\n"
    proxy = start_haproxy(
        server.lab.root / "haproxy",
        {
            "v1": f"{check}127.0.0.1:{pop3} send-proxy check inter 50ms",
            "v2": f"{check}127.0.0.1:{pop3} send-proxy-v2 check inter 50ms",
            "tls": f"{check}127.0.0.1:{pop3s} send-proxy-v2 check check-ssl verify none inter 50ms",
        },
    )
    try:
        # The first checks can time out (50 ms) while the workers still start: the master
        # listens before they serve. From the first check passed on, none may fail.
        deadline = time.monotonic() + 15
        failed = {}
        for backend in ("v1", "v2", "tls"):
            while (row := proxy.server_status(backend))["check_status"] != "L7OK":
                assert time.monotonic() < deadline, (row, proxy.output.read_text())
                time.sleep(0.05)
            failed[backend] = row["chkfail"]
        time.sleep(1)  # about 20 more checks of each
        for backend in ("v1", "v2", "tls"):
            row = proxy.server_status(backend)
            assert (row["status"], row["check_status"]) == ("UP", "L7OK"), row
            assert row["chkfail"] == failed[backend], (row, proxy.output.read_text())
    finally:
        stop(proxy)
    checks = [line for line in server.log_text().splitlines() if PROXY in line]
    assert len(checks) > 60
    for line in checks:
        assert " INFO " in line, line
        assert "login" not in line, line
        assert "client closed the connection" in line or " TLS " in line, line
