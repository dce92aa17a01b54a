"""Prometheus metrics (server/metrics.py, the master's endpoint): scraped with a real HTTP
client during a load run of a few hundred sessions over two workers; the counts add up."""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pop3d.server.metrics import parse_listen
from pop3d.server.metrics_http import SCRAPE_TIMEOUT
from tests.support.lab import Lab, Server, start_server

METRICS = "prometheus_enabled: yes\nprometheus_listen: 127.0.0.1:0\n"
THREADS = 8
ROUNDS = 40  # 320 sessions


def _endpoint(server: Server) -> tuple[str, Path]:
    deadline = time.monotonic() + 10
    while not (
        found := re.search(r"metrics on (http://\S+) \(worker counts in (\S+)\)", server.log_text())
    ):
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.05)
    return found[1], Path(found[2])


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - our loopback
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _settled(url: str, service: str) -> bool:
    """start_server's probe connection has come and gone."""
    samples = scrape(url)
    return (
        value(samples, "pop3d_sessions_total", service=service) >= 1
        and value(samples, "pop3d_sessions_current", service=service) == 0
    )


def _until(check: Callable[[], bool], what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _session(port: int, user: str, password: str) -> tuple[int, int]:
    """One session: (octets sent, octets received)."""
    sent = received = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        commands = [f"USER {user}", f"PASS {password}", "STAT", "QUIT"]
        stream = "".join(f"{c}\r\n" for c in commands).encode()
        sock.sendall(stream)  # PIPELINING
        sent += len(stream)
        while data := sock.recv(65536):
            received += len(data)
    return sent, received


def test_metrics_add_up_across_workers_under_load(tmp_path: Path) -> None:
    lab = Lab(tmp_path, extra_config=METRICS)
    lab.users.update({f"user{n}": f"secret{n}" for n in range(THREADS)})
    lab.create()
    server = start_server(lab, prefork=2)
    try:
        url, directory = _endpoint(server)
        assert url.startswith("http://127.0.0.1:")
        assert directory.is_dir()
        # start_server waits for the workers' processes; the master counts one when its
        # start returns, which can be a moment later (seen under load: 1 of 2)
        _until(lambda: value(scrape(url), "pop3d_workers", service="pop3") == 2, "workers")
        _until(lambda: _settled(url, "pop3"), "probe")
        before = scrape(url)
        totals = [[0, 0] for _ in range(THREADS)]

        def load(n: int) -> None:
            for i in range(ROUNDS):
                password = f"secret{n}" if i % 2 == 0 else "wrong"
                sent, received = _session(server.port, f"user{n}", password)
                totals[n][0] += sent
                totals[n][1] += received

        threads = [threading.Thread(target=load, args=(n,)) for n in range(THREADS)]
        for thread in threads:
            thread.start()
        during = scrape(url)  # mid-run: a well-formed page, counts in between
        sessions = value(during, "pop3d_sessions_total", service="pop3") - value(
            before, "pop3d_sessions_total", service="pop3"
        )
        assert 0 <= sessions <= THREADS * ROUNDS
        for thread in threads:
            thread.join()
        sent = sum(t[0] for t in totals)
        received = sum(t[1] for t in totals)

        def delta(name: str, **labels: str) -> float:
            return value(scrape(url), name, **labels) - value(before, name, **labels)

        # the last sessions' ends may still be on their way to the counters
        _until(lambda: value(scrape(url), "pop3d_sessions_current", service="pop3") == 0, "end")
        _until(lambda: delta("pop3d_received_bytes_total", service="pop3") == sent, "bytes in")
        after = scrape(url)

        def grew(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert grew("pop3d_sessions_total", service="pop3") == THREADS * ROUNDS
        half = THREADS * ROUNDS // 2
        assert grew("pop3d_logins_total", service="pop3", mechanism="USER", result="ok") == half
        assert grew("pop3d_logins_total", service="pop3", mechanism="USER", result="fail") == half
        assert grew("pop3d_received_bytes_total", service="pop3") == sent
        assert grew("pop3d_sent_bytes_total", service="pop3") == received
        assert value(after, "pop3d_workers", service="pop3") == 2
        assert value(after, "pop3d_worker_deaths_total", service="pop3") == 0
        for name, labels in after:  # no user name, no secret in any label
            for _key, label in labels:
                assert not label.startswith("user") and "secret" not in label, (name, labels)
    finally:
        assert server.stop() == 0
    assert not directory.exists()  # the master cleans up what it made


def test_limits_and_tls_handshakes_are_counted(tmp_path: Path) -> None:
    lab = Lab(tmp_path, extra_config=METRICS).create(with_tls=True)
    server = start_server(lab, {"pop3": "", "pop3s": "-s"}, maxchild=1)
    try:
        url, _directory = _endpoint(server)
        for service in ("pop3", "pop3s"):
            _until(lambda s=service: _settled(url, s), "probes")
        before = scrape(url)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as held:
            assert held.recv(1024).startswith(b"+OK")
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as extra:
                assert extra.recv(1024).startswith(b"-ERR [SYS/TEMP] Too many connections")
        assert lab.tls is not None
        context = ssl.create_default_context(cafile=str(lab.tls.ca))
        with socket.create_connection(("127.0.0.1", server.ports["pop3s"]), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                assert tls.recv(1024).startswith(b"+OK")
        _until(lambda: value(scrape(url), "pop3d_sessions_current", service="pop3s") == 0, "tls")
        with socket.create_connection(("127.0.0.1", server.ports["pop3s"]), timeout=10) as raw:
            raw.sendall(b"this is not a ClientHello\r\n" * 20)
            raw.recv(1024)
        _until(
            lambda: (
                value(scrape(url), "pop3d_tls_handshakes_total", service="pop3s", result="fail")
                > value(before, "pop3d_tls_handshakes_total", service="pop3s", result="fail")
            ),
            "failed handshake",
        )
        after = scrape(url)
        limit = {"service": "pop3", "limit": "maxchild"}
        assert value(after, "pop3d_limit_refusals_total", **limit) == 1
        ok = {"service": "pop3s", "result": "ok"}
        assert (
            value(after, "pop3d_tls_handshakes_total", **ok)
            - value(before, "pop3d_tls_handshakes_total", **ok)
            == 1
        )
    finally:
        server.stop()


def test_a_recycled_workers_counts_stay_and_its_files_go(tmp_path: Path) -> None:
    """-U 1: every session has a worker of its own. Each reaped worker's counters are
    folded into the archive: the counts add up, and the directory does not keep a file per
    worker that ever ran (every scrape reads them all)."""
    lab = Lab(tmp_path, extra_config=METRICS).create()
    server = start_server(lab, {"pop3": "-U 1"})
    recycled = 8
    try:
        url, directory = _endpoint(server)
        _until(lambda: _settled(url, "pop3"), "probe")
        before = scrape(url)
        for _ in range(recycled):
            _session(server.port, "alice", "wonderland")

        def grew(name: str, **labels: str) -> float:
            return value(scrape(url), name, **labels) - value(before, name, **labels)

        _until(lambda: grew("pop3d_sessions_total", service="pop3") == recycled, "counted")
        # the retired workers reaped: at most the archive and the live worker's file left
        _until(lambda: len(list(directory.glob("counter_*.db"))) <= 2, "folded", seconds=30)
        assert (directory / "counter_archive.db").exists()
        assert grew("pop3d_sessions_total", service="pop3") == recycled
        ok = {"service": "pop3", "mechanism": "USER", "result": "ok"}
        assert grew("pop3d_logins_total", **ok) == recycled
        assert value(scrape(url), "pop3d_sessions_current", service="pop3") == 0
        assert "cannot fold" not in server.log_text()
    finally:
        assert server.stop() == 0


def test_a_scrape_connection_that_does_not_finish_is_closed(tmp_path: Path) -> None:
    """The endpoint set no timeout: a connection that sent half a request held one of the
    master's threads for as long as its client liked, a hundred of them a hundred threads
    (found probing). Now each connection has SCRAPE_TIMEOUT seconds in all: one that went
    quiet and one that sends an octet a second are both closed, unlogged, and a scrape
    still answers."""
    lab = Lab(tmp_path, extra_config=METRICS).create()
    server = start_server(lab)
    try:
        url, _directory = _endpoint(server)
        host, port = urllib.parse.urlsplit(url).netloc.rsplit(":", 1)
        quiet = socket.create_connection((host, int(port)), timeout=10)
        quiet.sendall(b"GET /metrics HTTP/1.1\r\nX: ")
        dripping = socket.create_connection((host, int(port)), timeout=10)
        dripping.sendall(b"GET /metrics HTTP/1.1\r\n")
        quiet.setblocking(False)
        dripping.setblocking(False)
        # Bounded well past the timeout: a loaded machine may start the thread late.
        deadline = time.monotonic() + SCRAPE_TIMEOUT + 20
        while not (_closed_by_server(quiet) and _closed_by_server(dripping)):
            assert time.monotonic() < deadline, "still open"
            with contextlib.suppress(OSError):  # reset: closed, as the next look says
                dripping.send(b"X")
            time.sleep(1)
        quiet.close()
        dripping.close()
        assert value(scrape(url), "pop3d_workers", service="pop3") == 1
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log_text()


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether a non-blocking socket's peer closed it."""
    try:
        return sock.recv(1024) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_prometheus_listen_forms() -> None:
    assert parse_listen("9110") == ("127.0.0.1", 9110)
    assert parse_listen("0.0.0.0:9110") == ("0.0.0.0", 9110)
    assert parse_listen("[::1]:9110") == ("::1", 9110)
    for bad in ("", "host:", "[::1]9110", "127.0.0.1:99999", "x:y"):
        try:
            parse_listen(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


def test_prometheus_listen_ports_are_ascii_digits() -> None:
    """isdigit() and int() took any script's digits ("\u0669\u0661\u0661\u0660" was
    9110), and int() of 5,000 digits raised its own error."""
    for bad in ("\u0669\u0661\u0661\u0660", "127.0.0.1:\uff19\uff11\uff11\uff10", "1" * 5000):
        with pytest.raises(ValueError, match="expected host:port, \\[v6\\]:port or a port"):
            parse_listen(bad)


def test_a_scrape_waits_out_a_worker_file_being_made(tmp_path: Path) -> None:
    """Seen in CI: a worker's counter file exists empty for an instant (prometheus_client
    opens it, then sizes it), and a scrape reading it then was a 500."""
    from prometheus_client.mmap_dict import MmapedDict
    from prometheus_client.multiprocess import MultiProcessCollector

    from pop3d.server import metrics

    made = tmp_path / "counter_4242.db"
    made.touch()  # as a worker leaves it between its open and its sizing
    timer = threading.Timer(0.05, lambda: MmapedDict(str(made)).close())
    timer.start()
    try:
        scrape = metrics.Serialised(
            MultiProcessCollector(None, path=str(tmp_path)), threading.Lock()
        )
        assert scrape.collect() == []
    finally:
        timer.join()


def test_a_worker_dead_while_making_its_file_is_folded(tmp_path: Path) -> None:
    """A worker killed between making its file and sizing it left it empty: folding it
    raised struct.error, which no caller expected (the master's loop)."""
    from pop3d.server import metrics

    (tmp_path / "counter_4242.db").touch()
    metrics.fold_dead_worker(str(tmp_path), 4242)
    assert not (tmp_path / "counter_4242.db").exists()
