"""The log's lines (server/loglines.py): LOG_FORMAT put together directly gives what
logging's own formatting of LOG_FORMAT gives, for any record; a traceback still follows
its line; and :func:`line` writes what ``logger.log(level, "%s", text)`` writes, itself
when every handler on the way is a LineHandler and through logging whenever anything else
(a filter, another handler, a level, a switched-off logger) could change the outcome."""

from __future__ import annotations

import io
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pop3d.server.loglines import (
    LOG_FORMAT,
    LineFormatter,
    LineHandler,
    MessageFormatter,
    SyslogLineHandler,
    line,
    printable,
)
from tests.server.test_network import command, login
from tests.support.lab import Lab, start_server

NAMES = st.sampled_from(["pop3d", "pop3d.audit", "pop3d.master", "root"])
LEVELS = st.sampled_from([logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR])


def _generic() -> LineFormatter:
    formatter = LineFormatter(LOG_FORMAT)
    formatter.direct = False  # logging's own path, as for any other format
    return formatter


def _record(
    name: str, level: int, template: str, args: tuple[object, ...], created: float
) -> logging.LogRecord:
    record = logging.LogRecord(name, level, __file__, 1, template, args, None)
    record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
    return record


@given(
    name=NAMES,
    level=LEVELS,
    message=st.text(max_size=200),
    args=st.lists(st.one_of(st.text(max_size=40), st.integers()), max_size=3),
    created=st.floats(min_value=0, max_value=4e9),
)
def test_the_direct_line_is_logging_s_own(
    name: str, level: int, message: str, args: list[object], created: float
) -> None:
    template = message.replace("%", "%%") + " %s" * len(args)
    record = _record(name, level, template, tuple(args), created)
    direct = LineFormatter(LOG_FORMAT)
    assert direct.direct
    assert direct.format(record) == _generic().format(record)


def _fail() -> None:
    raise ValueError("boom")


def test_a_traceback_follows_its_line() -> None:
    try:
        _fail()
    except ValueError:
        record = logging.LogRecord("pop3d", logging.ERROR, __file__, 1, "failed", (), None)
        record.exc_info = sys.exc_info()
    text = LineFormatter(LOG_FORMAT).format(record)
    first, _, rest = text.partition("\n")
    assert first.endswith(f" pop3d[{record.process}]: ERROR failed")
    assert "Traceback" in rest and "ValueError: boom" in rest


def _line_handler() -> tuple[LineHandler, io.StringIO]:
    stream = io.StringIO()
    handler = LineHandler(stream)
    handler.setFormatter(LineFormatter(LOG_FORMAT))
    return handler, stream


@given(name=NAMES, level=LEVELS, text=st.text(max_size=200), created=st.floats(0, 4e9))
def test_a_line_written_directly_is_the_line_logging_writes(
    name: str, level: int, text: str, created: float
) -> None:
    direct, direct_out = _line_handler()
    through_logging, logged_out = _line_handler()
    direct.write_line(name, level, created, text)
    through_logging.handle(_record(name, level, "%s", (text,), created))
    assert direct_out.getvalue() == logged_out.getvalue()


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def records_made() -> Iterator[list[str]]:
    """The messages of the LogRecords made meanwhile: none when line() wrote directly."""
    made: list[str] = []
    factory = logging.getLogRecordFactory()

    def counting(*args: object, **kwargs: object) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        made.append(record.getMessage())
        return record

    logging.setLogRecordFactory(counting)
    try:
        yield made
    finally:
        logging.setLogRecordFactory(factory)


@pytest.fixture
def tree() -> tuple[logging.Logger, logging.Logger]:
    """A parent and a child logger outside logging's registry: no handler of the root's
    (nor pytest's capture handlers, which it adds to every registered logger that does
    not propagate) is on their way."""
    parent = logging.Logger("pop3d", logging.INFO)
    child = logging.Logger("pop3d.audit")
    child.parent = parent
    return parent, child


def test_only_line_handlers_are_written_directly(
    tree: tuple[logging.Logger, logging.Logger], records_made: list[str]
) -> None:
    parent, child = tree
    first, first_out = _line_handler()
    second, second_out = _line_handler()
    parent.addHandler(first)
    child.addHandler(second)
    line(child, logging.INFO, "counts: retr=<1>")
    assert records_made == []  # no LogRecord: the direct way
    for out in (first_out, second_out):
        assert out.getvalue().endswith(f" pop3d.audit[{os.getpid()}]: INFO counts: retr=<1>\n")


def test_another_handler_on_the_way_gets_its_record(
    tree: tuple[logging.Logger, logging.Logger], records_made: list[str]
) -> None:
    parent, child = tree
    handler, out = _line_handler()
    collect = _Collect()
    child.addHandler(handler)
    parent.addHandler(collect)
    line(child, logging.WARNING, "badlogin: x")
    assert records_made == ["badlogin: x"]
    assert collect.messages == ["badlogin: x"]
    assert out.getvalue().endswith(" WARNING badlogin: x\n")


def test_a_logger_that_does_not_propagate_ends_the_way(
    tree: tuple[logging.Logger, logging.Logger], records_made: list[str]
) -> None:
    parent, child = tree
    handler, out = _line_handler()
    child.addHandler(handler)
    child.propagate = False
    parent.addHandler(_Collect())  # not on the way: the child does not propagate
    line(child, logging.INFO, "session s ended: QUIT")
    assert records_made == []
    assert out.getvalue().endswith(" INFO session s ended: QUIT\n")


@pytest.mark.parametrize("where", ["logger", "handler"])
def test_a_filter_sees_every_line(
    tree: tuple[logging.Logger, logging.Logger], records_made: list[str], where: str
) -> None:
    parent, child = tree
    handler, out = _line_handler()
    parent.addHandler(handler)
    dropped = "login: secret"

    def keep(record: logging.LogRecord) -> bool:
        return record.getMessage() != dropped

    (child if where == "logger" else handler).addFilter(keep)
    line(child, logging.INFO, dropped)
    line(child, logging.INFO, "login: kept")
    assert records_made == [dropped, "login: kept"]
    assert dropped not in out.getvalue() and "login: kept" in out.getvalue()


def test_levels_and_switched_off_loggers_are_honoured(
    tree: tuple[logging.Logger, logging.Logger], records_made: list[str]
) -> None:
    parent, child = tree
    handler, out = _line_handler()
    quiet, quiet_out = _line_handler()
    quiet.setLevel(logging.ERROR)
    parent.addHandler(handler)
    parent.addHandler(quiet)
    line(child, logging.DEBUG, "below the logger's level")
    line(child, logging.WARNING, "above the logger's, below one handler's")
    child.disabled = True
    line(child, logging.ERROR, "from a switched-off logger")
    assert records_made == []
    assert out.getvalue().count("\n") == 1 and "above the logger's" in out.getvalue()
    assert quiet_out.getvalue() == ""


def test_a_handler_with_another_format_gets_its_record(
    tree: tuple[logging.Logger, logging.Logger], records_made: list[str]
) -> None:
    parent, child = tree
    handler, out = _line_handler()
    handler.setFormatter(LineFormatter("%(levelname)s|%(message)s"))
    parent.addHandler(handler)
    line(child, logging.INFO, "login: x")
    assert records_made == ["login: x"]
    assert out.getvalue() == "INFO|login: x\n"


def test_a_stream_handler_of_another_kind_gets_its_record(
    tree: tuple[logging.Logger, logging.Logger], records_made: list[str]
) -> None:
    parent, child = tree
    out = io.StringIO()
    other = logging.StreamHandler(out)  # the same formatter, but not a LineHandler
    other.setFormatter(LineFormatter(LOG_FORMAT))
    parent.addHandler(other)
    line(child, logging.INFO, "login: x")
    assert records_made == ["login: x"]
    assert out.getvalue().endswith(" INFO login: x\n")


# --- syslog_socket's handler ------------------------------------------------------------


class _Daemon:
    """A unix datagram socket bound in a fresh folder, as syslogd binds /dev/log."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="syslog-", dir="/tmp")  # sun_path: 108 octets
        self.path = os.path.join(self.folder, "log")
        self.bind()

    def bind(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(5)

    def restart(self) -> None:
        self.sock.close()
        os.unlink(self.path)
        self.bind()

    def received(self) -> bytes:
        return self.sock.recv(65536)

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.folder)


@pytest.fixture
def daemon() -> Iterator[_Daemon]:
    listening = _Daemon()
    try:
        yield listening
    finally:
        listening.close()


def _syslog_handler(daemon: _Daemon) -> SyslogLineHandler:
    handler = SyslogLineHandler(daemon.path, SyslogLineHandler.LOG_MAIL)
    handler.ident = "pop3/pop3[42]: "
    handler.setFormatter(MessageFormatter())
    return handler


def test_a_datagram_sent_directly_is_the_one_logging_sends(daemon: _Daemon) -> None:
    handler = _syslog_handler(daemon)

    @given(name=NAMES, level=LEVELS, text=st.text(max_size=200), nul=st.booleans())
    def same(name: str, level: int, text: str, nul: bool) -> None:
        handler.append_nul = nul
        handler.write_line(name, level, 0.0, text)
        direct = daemon.received()
        handler.handle(_record(name, level, "%s", (text,), 0.0))
        assert direct == daemon.received()
        assert direct.startswith(b"<%d>pop3/pop3[42]: " % (2 << 3 | _SEVERITY[level]))

    try:
        same()
    finally:
        handler.close()


_SEVERITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}


def test_syslog_and_the_stream_both_written_directly(
    tree: tuple[logging.Logger, logging.Logger], records_made: list[str], daemon: _Daemon
) -> None:
    parent, child = tree
    stream, out = _line_handler()
    syslog = _syslog_handler(daemon)
    parent.addHandler(stream)
    parent.addHandler(syslog)
    try:
        line(child, logging.WARNING, "badlogin: x")
        assert records_made == []
        assert daemon.received() == b"<20>pop3/pop3[42]: badlogin: x\x00"
        assert out.getvalue().endswith(" WARNING badlogin: x\n")
        # the daemon restarted (a new socket at the path): reconnected, nothing lost
        daemon.restart()
        line(child, logging.INFO, "login: y")
        assert daemon.received() == b"<22>pop3/pop3[42]: login: y\x00"
    finally:
        syslog.close()


def test_a_syslog_handler_with_another_formatter_gets_its_record(
    tree: tuple[logging.Logger, logging.Logger], records_made: list[str], daemon: _Daemon
) -> None:
    parent, child = tree
    syslog = _syslog_handler(daemon)
    syslog.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    parent.addHandler(syslog)
    try:
        line(child, logging.INFO, "login: x")
        assert records_made == ["login: x"]
        assert daemon.received() == b"<22>pop3/pop3[42]: INFO login: x\x00"
    finally:
        syslog.close()


def test_a_closed_syslog_handler_opens_its_socket_again(daemon: _Daemon) -> None:
    """As SysLogHandler.emit does after close() (logging's shutdown closes every handler)."""
    handler = _syslog_handler(daemon)
    handler.close()
    try:
        handler.write_line("pop3d", logging.INFO, 0.0, "late: x")
        assert daemon.received() == b"<22>pop3/pop3[42]: late: x\x00"
    finally:
        handler.close()


# --- one line per message, whatever is in it ----------------------------------------------

_FORGED = "x\n2026-12-04 07:43:17,766 pop3d[1]: ERROR FORGED\r\x1b[31m\u2028\x85"
_SHOWN = "x\\x0a2026-12-04 07:43:17,766 pop3d[1]: ERROR FORGED\\x0d\\x1b[31m\\u2028\\x85"


@given(text=st.text(max_size=80))
def test_a_message_is_one_printable_line(text: str) -> None:
    shown = printable(text)
    assert shown.isprintable()
    assert shown == text or not text.isprintable()


def test_line_ends_and_escapes_in_a_message_are_shown_not_written(
    tree: tuple[logging.Logger, logging.Logger], daemon: _Daemon
) -> None:
    """Every way a line is made: :func:`line` directly, logging's own path with the
    text as an argument (a formatter of another format), and syslog both ways."""
    parent, child = tree
    stream, out = _line_handler()
    other, other_out = _line_handler()
    other.setFormatter(LineFormatter("%(levelname)s|%(message)s"))
    syslog = _syslog_handler(daemon)
    for handler in (stream, syslog):
        parent.addHandler(handler)
    try:
        line(child, logging.ERROR, f"cannot open message: {_FORGED}")
        assert out.getvalue().endswith(f" ERROR cannot open message: {_SHOWN}\n")
        assert out.getvalue().count("\n") == 1
        assert daemon.received() == f"<19>pop3/pop3[42]: cannot open message: {_SHOWN}\0".encode()
        child.error("principal %s refused", _FORGED)  # through logging: a template and args
        assert out.getvalue().splitlines()[1].endswith(f" ERROR principal {_SHOWN} refused")
        assert daemon.received() == f"<19>pop3/pop3[42]: principal {_SHOWN} refused\0".encode()
        parent.removeHandler(stream)
        parent.addHandler(other)
        child.warning("peer %s", _FORGED)
        assert other_out.getvalue() == f"WARNING|peer {_SHOWN}\n"
    finally:
        syslog.close()


# --- a syslog daemon that goes away -------------------------------------------------------


def _stop(daemon: _Daemon) -> None:
    daemon.sock.close()
    os.unlink(daemon.path)


def test_a_syslog_daemon_away_is_one_notice_not_a_traceback_per_line(
    daemon: _Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both ways a line goes out, twenty times each while the daemon is away: one line on
    standard error (logging printed a thirty-line traceback per line), every line tried
    again, and syslog gets lines as soon as the daemon is back."""
    handler = _syslog_handler(daemon)
    try:
        _stop(daemon)
        for n in range(20):
            handler.write_line("pop3d", logging.INFO, 0.0, f"login: {n}")
            handler.handle(_record("pop3d", logging.INFO, "%s", (f"counts: {n}",), 0.0))
        errors = capsys.readouterr().err
        assert "Traceback" not in errors and "Logging error" not in errors, errors
        assert len(errors.splitlines()) == 1, errors
        assert errors.endswith(
            f" WARNING syslog_socket {daemon.path}: No such file or directory: log lines go "
            "to standard error only until it answers again\n"
        )
        daemon.bind()
        handler.write_line("pop3d", logging.INFO, 0.0, "login: back")
        assert daemon.received() == b"<22>pop3/pop3[42]: login: back\x00"
        assert capsys.readouterr().err.endswith(
            f" INFO syslog_socket {daemon.path}: sending again\n"
        )
    finally:
        handler.close()


def test_a_master_whose_syslog_goes_away_keeps_serving(tmp_path: Path, daemon: _Daemon) -> None:
    lab = Lab(tmp_path / "lab", extra_config=f"syslog_socket: {daemon.path}\n").create()
    server = start_server(lab)
    try:
        _stop(daemon)
        for _ in range(3):
            sock, reader, reply = login(server.port)
            with sock:
                assert reply.startswith(b"+OK"), reply
                assert command(sock, reader, b"QUIT").startswith(b"+OK")
        daemon.bind()
        sock, reader, reply = login(server.port, "alice", "wonderland")
        with sock:
            assert reply.startswith(b"+OK"), reply
            assert command(sock, reader, b"QUIT").startswith(b"+OK")
        deadline = time.monotonic() + 10
        while b"login: " not in (received := daemon.received()):
            assert time.monotonic() < deadline, received
        assert b" alice " in received
    finally:
        assert server.stop() == 0
    log = server.log_text()
    assert "Traceback" not in log and "Logging error" not in log, log
    assert 1 <= log.count(f"syslog_socket {daemon.path}: No such file") <= 2, log
