"""Prometheus metrics (``prometheus_enabled``): counted in every worker, served by the master.

Workers count with ``prometheus_client`` in its multiprocess mode: each process writes its
values to small memory-mapped files in a directory the master made for this run and hands
down as ``PROMETHEUS_MULTIPROC_DIR`` (``prometheus_client`` chooses its storage when it is
first imported, so the variable is in a worker's environment from its start). The master
reads them all at each scrape, adds what only it knows (its workers, their restarts), and
serves the text format on ``prometheus_listen`` (server/master.py). When the master reaps a
worker, the worker's counters are folded into one archive file (they stay in the sums) and
its files go, as does its share of a gauge (sessions now): the directory holds the live
workers' files and the archive, not a file per worker that ever ran, which with ``-U`` or
``-T`` recycling would be thousands, each read by every scrape.

What is counted, and when: the counting happens per session, per login and per TLS
handshake, never per chunk of a message: bytes are added when a session ends (so a scrape
during a long RETR does not see its bytes yet). Each count is one write to a mapped page
under a lock (about a microsecond); with metrics off nothing is imported and every call
is a method of :data:`OFF` that does nothing.

Labels are bounded and secret-free: the service name (from cyrus.conf), the login method
(USER, APOP, KPOP or an enabled SASL mechanism), a result (ok, fail, refused), a limit's
name. Never a user name (unbounded, and private), never a password or token.
"""

from __future__ import annotations

import os
import re
import struct
import threading
import time
from typing import Any

ENV = "PROMETHEUS_MULTIPROC_DIR"


class ServiceMetrics:
    """The counting calls of one service; this base class counts nothing (metrics off)."""

    def session_started(self) -> None:
        pass

    def session_ended(self, bytes_in: int, bytes_out: int) -> None:
        pass

    def login(self, mechanism: str, result: str) -> None:
        pass

    def tls_handshake(self, ok: bool) -> None:
        pass

    def limit_hit(self, limit: str) -> None:
        pass


OFF = ServiceMetrics()


class _Counting(ServiceMetrics):
    def __init__(self, service: str, family: dict[str, Any]) -> None:
        self._current = family["sessions_current"].labels(service)
        self._sessions = family["sessions"].labels(service)
        self._bytes_in = family["bytes_in"].labels(service)
        self._bytes_out = family["bytes_out"].labels(service)
        self._logins = family["logins"]
        self._tls = family["tls"]
        self._limits = family["limits"]
        self._service = service

    def session_started(self) -> None:
        self._sessions.inc()
        self._current.inc()

    def session_ended(self, bytes_in: int, bytes_out: int) -> None:
        self._current.dec()
        if bytes_in:
            self._bytes_in.inc(bytes_in)
        if bytes_out:
            self._bytes_out.inc(bytes_out)

    def login(self, mechanism: str, result: str) -> None:
        self._logins.labels(self._service, mechanism, result).inc()

    def tls_handshake(self, ok: bool) -> None:
        self._tls.labels(self._service, "ok" if ok else "fail").inc()

    def limit_hit(self, limit: str) -> None:
        self._limits.labels(self._service, limit).inc()


_family: dict[str, Any] | None = None


def _families() -> dict[str, Any]:
    global _family  # noqa: PLW0603 - one set of metric objects per process
    if _family is None:
        from prometheus_client import Counter, Gauge  # noqa: PLC0415 - only when enabled

        _family = {
            "sessions_current": Gauge(
                "pop3d_sessions_current",
                "Sessions open now.",
                ["service"],
                registry=None,
                multiprocess_mode="livesum",
            ),
            "sessions": Counter(
                "pop3d_sessions", "Connections served.", ["service"], registry=None
            ),
            "logins": Counter(
                "pop3d_logins",
                "Authentication attempts by method and result (ok, fail: refused "
                "credentials, refused: authenticated but not let in).",
                ["service", "mechanism", "result"],
                registry=None,
            ),
            "bytes_in": Counter(
                "pop3d_received_bytes",
                "Octets received on the wire, counted when a session ends.",
                ["service"],
                registry=None,
            ),
            "bytes_out": Counter(
                "pop3d_sent_bytes",
                "Octets sent on the wire, counted when a session ends.",
                ["service"],
                registry=None,
            ),
            "tls": Counter(
                "pop3d_tls_handshakes",
                "TLS handshakes (pop3s and STLS) by result.",
                ["service", "result"],
                registry=None,
            ),
            "limits": Counter(
                "pop3d_limit_refusals",
                "Connections refused by a limit (maxchild: the service is full).",
                ["service", "limit"],
                registry=None,
            ),
        }
    return _family


def for_service(service: str) -> ServiceMetrics:
    """The counting calls of ``service`` in this process: :data:`OFF` unless the master
    enabled metrics (``PROMETHEUS_MULTIPROC_DIR`` in the environment)."""
    if not os.environ.get(ENV):
        return OFF
    return _Counting(service, _families())


# Metric types whose values only ever add up across processes (multiprocess file names
# start with the type).
_ADDITIVE = ("counter", "histogram", "summary")


def fold_dead_worker(directory: str, pid: int) -> None:
    """A reaped worker's counts into the archive files of ``directory``, its own files
    removed. The caller holds the lock :class:`Serialised` scrapes take: a scrape between
    the fold and the removal would count them twice. Raises OSError."""
    from prometheus_client import multiprocess  # noqa: PLC0415 - only when enabled
    from prometheus_client.mmap_dict import MmapedDict  # noqa: PLC0415

    multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
    for kind in _ADDITIVE:
        dead = os.path.join(directory, f"{kind}_{pid}.db")
        try:
            values = list(MmapedDict.read_all_values_from_file(dead))  # type: ignore[no-untyped-call]
        except FileNotFoundError:
            continue
        except struct.error:  # it died making the file: empty, nothing counted in it
            values = []
        archive = MmapedDict(os.path.join(directory, f"{kind}_archive.db"))  # type: ignore[no-untyped-call]
        try:
            for key, value, timestamp, _position in values:
                total, _ = archive.read_value(key)  # type: ignore[no-untyped-call]
                archive.write_value(key, total + value, timestamp)  # type: ignore[no-untyped-call]
        finally:
            archive.close()  # type: ignore[no-untyped-call]
        os.unlink(dead)


# How long a scrape waits for a worker's file being made (see Serialised.collect).
SCRAPE_PATIENCE = 0.5


class Serialised:
    """A collector whose scrapes wait while a dead worker is folded (the endpoint is a
    thread of the master; the folding happens in its main loop)."""

    def __init__(self, collector: Any, lock: threading.Lock) -> None:
        self._collector = collector
        self._lock = lock

    def collect(self) -> list[Any]:
        # A worker making its file (prometheus_client opens it, then sizes it) leaves it
        # empty for an instant, and the reader fails on an empty file: the scrape was a
        # 500 (seen in CI, -U 1 starting a worker a session). A moment later it reads.
        deadline = time.monotonic() + SCRAPE_PATIENCE
        while True:
            with self._lock:
                try:
                    return list(self._collector.collect())
                except struct.error:
                    if time.monotonic() > deadline:
                        raise
            time.sleep(0.01)


def parse_listen(text: str) -> tuple[str, int]:
    """``prometheus_listen``: ``host:port``, ``[v6]:port`` or a port alone (loopback); port 0
    takes a free port (the master logs which)."""
    text = text.strip()
    host, port = "127.0.0.1", text
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"prometheus_listen {text!r}: expected [address]:port")
        host, port = inside, rest[1:]
    elif ":" in text:
        host, _, port = text.rpartition(":")
    # ASCII digits, at most five: isdigit() and int() take any script's ("\u0669\u0661\u0661\u0660"
    # was 9110), and int() of 4,300 digits raises
    if not re.fullmatch(r"[0-9]{1,5}", port) or not 0 <= int(port) < 65536 or not host:
        raise ValueError(f"prometheus_listen {text!r}: expected host:port, [v6]:port or a port")
    return host, int(port)
