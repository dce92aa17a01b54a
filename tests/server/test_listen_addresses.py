"""A TCP ``listen`` stands for every address it names, as in Cyrus's master: a port alone
each family's wildcard, a name each address it resolves to; one socket per address."""

from __future__ import annotations

import errno
import logging
import signal
import socket
import subprocess
import sys
import time

import pytest

from pop3d.config.cyrus import Listen, Service
from pop3d.server import master
from tests.support.lab import Lab, free_port, stat_once_served

LOOPBACKS = "127.0.0.1", "::1"


def _service(listen: Listen) -> Service:
    return Service("pop3", ("pop3d",), listen, 1, -1, "cyrus.conf", 2)


def _both_loopbacks(port: int) -> list[tuple[int, tuple[object, ...]]]:
    return [(socket.AF_INET, ("127.0.0.1", port)), (socket.AF_INET6, ("::1", port, 0, 0))]


def _free_on_both() -> int:
    for _attempt in range(20):
        port = free_port()
        with socket.socket(socket.AF_INET6) as probe:
            try:
                probe.bind(("::1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no port free on both loopbacks")


def test_a_port_alone_is_every_address_of_both_families() -> None:
    # resolution only: binding the wildcard would listen beyond loopback
    found = master.addresses(Listen(socket.AF_UNSPEC, "", 1110))
    assert sorted(found) == sorted(
        [(socket.AF_INET, ("0.0.0.0", 1110)), (socket.AF_INET6, ("::", 1110, 0, 0))]
    )
    only_v6 = master.addresses(Listen(socket.AF_INET6, "", 1110))
    assert only_v6 == [(socket.AF_INET6, ("::", 1110, 0, 0))]


def test_each_address_gets_its_socket() -> None:
    port = _free_on_both()
    sockets = master.bind_each(_service(Listen(socket.AF_UNSPEC, "x", port)), _both_loopbacks(port))
    try:
        assert [s.family for s in sockets] == [socket.AF_INET, socket.AF_INET6]
        assert master.where(sockets) == f"127.0.0.1:{port}, [::1]:{port}"
        for host in LOOPBACKS:
            with socket.create_connection((host, port), timeout=5):
                pass
        # each family its own socket: the IPv6 one takes no IPv4 client
        assert sockets[1].getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    finally:
        for sock in sockets:
            sock.close()


def test_an_address_not_on_this_host_is_skipped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    elsewhere = (socket.AF_INET, ("192.0.2.1", port))  # TEST-NET-1: on no interface
    service = _service(Listen(socket.AF_UNSPEC, "x", port))
    with caplog.at_level(logging.WARNING, logger=master.log.name):
        sockets = master.bind_each(service, [elsewhere, (socket.AF_INET, ("127.0.0.1", port))])
    try:
        assert [s.getsockname() for s in sockets] == [("127.0.0.1", port)]
        assert f"service pop3: not listening on an address of x:{port}" in caplog.text
    finally:
        for sock in sockets:
            sock.close()
    with pytest.raises(OSError) as caught:  # none of them here: nothing to serve on
        master.bind_each(service, [elsewhere])
    assert caught.value.errno == errno.EADDRNOTAVAIL


def test_a_taken_address_stops_the_bind_and_leaves_nothing_bound() -> None:
    port = _free_on_both()
    with socket.socket(socket.AF_INET6) as taker:
        taker.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        taker.bind(("::1", port))
        taker.listen()
        with pytest.raises(OSError) as caught:
            master.bind_each(_service(Listen(socket.AF_UNSPEC, "x", port)), _both_loopbacks(port))
        assert caught.value.errno == errno.EADDRINUSE
    with socket.socket() as again:  # the IPv4 socket bound first was closed
        again.bind(("127.0.0.1", port))


# The master, run with a resolver that answers "localhost" with both loopback addresses:
# this host's /etc/hosts gives 127.0.0.1 only, and a test listens on loopback only.
_MASTER_RESOLVING_BOTH = """
import socket, sys
from pop3d.server import master
port = int(sys.argv[1])
master.addresses = lambda listen: [
    (socket.AF_INET, ("127.0.0.1", port)), (socket.AF_INET6, ("::1", port, 0, 0))
]
from pop3d.cli.master import main
sys.exit(main(sys.argv[2:]))
"""


def test_the_master_serves_every_address_of_a_name(lab: Lab) -> None:
    port = _free_on_both()
    conf = lab.root / "cyrus.conf"
    conf.write_text(f'SERVICES {{\n  pop3 cmd="pop3d" listen="localhost:{port}" prefork=1\n}}\n')
    process = subprocess.Popen(
        [sys.executable, "-c", _MASTER_RESOLVING_BOTH, str(port), "-C", str(lab.config)]
        + ["-M", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    user, password = next(iter(lab.users.items()))
    try:
        deadline = time.monotonic() + 30
        for host in LOOPBACKS:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            answer = stat_once_served(family, (host, port), user, password, deadline)
            assert answer.startswith(b"+OK "), (host, answer)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        errors = process.stderr.read().decode()
    assert "Traceback" not in errors
    assert f"service pop3 listening on 127.0.0.1:{port}, [::1]:{port}" in errors
