"""The log's lines: LOG_FORMAT, the formatter and handler that write it, and :func:`line`,
the way in for the lines every session writes.

A busy worker writes three log lines per session (the login record, the session's end
and its counts: server/audit.py, server/connection.py) and four over TLS. Through
``logging`` each is a ``LogRecord`` of twenty fields, a walk up the logger hierarchy, two
filter passes, the handler's lock taken twice and a formatter; under load, with the cache
shared by ten clients' processes, that was a fifth of a plain session's CPU (bench/RESULTS.md
section 22). :func:`line` writes such a line itself when every handler that would get it is
a :class:`LineHandler` formatting LOG_FORMAT or a :class:`SyslogLineHandler` (``syslog_socket``)
sending the message alone, and nothing on the way filters: the same octets, to the same
stream or socket, under the same lock, through a tenth of the code. Any other set-up (a
filter, a test's capture handler, another handler or format, a logger switched off) gets
the line through ``logging`` as before, so what reaches the log never depends on which
way it went.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import sys
import time
from socket import socket as Socket
from typing import TYPE_CHECKING, cast

LOG_FORMAT = "%(asctime)s %(name)s[%(process)d]: %(levelname)s %(message)s"


def printable(text: str) -> str:
    """``text`` with every character that is not printable (line ends, ESC, NUL, the C1
    controls, U+2028...) written as ``\\xNN``/``\\uNNNN``: the message of a log line is
    one line whatever a client put into it. Log lines quote what clients and local users
    choose (a certificate's name, a Kerberos principal, a Maildir file name, an error's
    text), and a line end in one of them would otherwise write a line of its own, one a
    log reader (fail2ban) takes for the server's. Applied where a line is put together,
    so no caller has to remember it; a traceback after its line keeps its own lines."""
    if text.isprintable():
        return text  # the common case, without a loop
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif (code := ord(ch)) < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


class _Process:
    """The process id, as LogRecord takes it, without a system call per line
    (pop3d-master -d forks: a forked child asks again)."""

    pid = os.getpid()


os.register_at_fork(after_in_child=lambda: setattr(_Process, "pid", os.getpid()))


class LineFormatter(logging.Formatter):
    """The standard formatter, with the date and time of the current second formatted
    once, not for every line (``localtime`` and ``strftime`` were a tenth of a worker's
    logging cost), and LOG_FORMAT's line put together directly: the generic path (a style
    object, a dict lookup per field, a search of the format for ``asctime`` at every
    record) cost twice as much. Any other format, and a record with a traceback, take
    logging's own path."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self.direct = fmt == LOG_FORMAT
        # (second, its text): one attribute, so a thread never pairs one second's text
        # with another's number
        self._second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        if not self.direct or record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        record.message = record.getMessage()
        return self.line(
            created=record.created,
            msecs=record.msecs,
            name=record.name,
            pid=record.process,
            level=record.levelname,
            text=record.message,
        )

    def line(
        self, *, created: float, msecs: float, name: str, pid: int | None, level: str, text: str
    ) -> str:
        return f"{self._stamp(created, msecs)} {name}[{pid}]: {level} {printable(text)}"

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return self._stamp(record.created, record.msecs)

    def _stamp(self, created: float, msecs: float) -> str:
        second, text = self._second
        if second != int(created):
            second = int(created)
            text = time.strftime(self.default_time_format, self.converter(created))
            self._second = (second, text)
        return f"{text},{int(msecs):03d}"


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that :func:`line` may write to directly (with LOG_FORMAT)."""

    def direct(self) -> bool:
        formatter = self.formatter
        return isinstance(formatter, LineFormatter) and formatter.direct

    def write_line(self, name: str, level: int, created: float, text: str) -> None:
        formatter = self.formatter
        assert isinstance(formatter, LineFormatter)
        out = formatter.line(
            created=created,
            msecs=(created - int(created)) * 1000,
            name=name,
            pid=_Process.pid,
            level=logging.getLevelName(level),
            text=text,
        )
        self.acquire()
        try:
            self.stream.write(out + self.terminator)
            self.stream.flush()
        except RecursionError:
            raise
        except Exception:  # a closed or full stream: what logging does with it
            self.handleError(logging.LogRecord(name, level, "", 0, "%s", (text,), None))
        finally:
            self.release()


class MessageFormatter(logging.Formatter):
    """The message alone: syslog's datagram carries the rest (priority, the tag)."""

    def __init__(self) -> None:
        super().__init__("%(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(record.message)


class SyslogLineHandler(logging.handlers.SysLogHandler):
    """``syslog_socket``'s handler (a unix socket), which :func:`line` may send to
    directly when its formatter is a :class:`MessageFormatter`. Both ways make the
    datagram ``SysLogHandler.emit`` makes (priority, ident, the message, a NUL if asked)
    in :meth:`_send`, and send it as it does (reconnected once if the daemon restarted).

    A daemon that cannot be reached is not logging's traceback for every line (thirty
    lines each on standard error, found probing): see :meth:`handleError`."""

    if TYPE_CHECKING:  # SysLogHandler's own, which typeshed does not declare
        socket: Socket | None

        def _connect_unixsocket(self, address: object) -> None: ...

    NOTICE_EVERY = 60.0  # seconds between two notices that the daemon is still away

    def __init__(self, path: str, facility: int) -> None:
        # What kept the socket from connecting when it was made: SysLogHandler drops it
        # (as openlog(3) does), which left a wrong syslog_socket unnoticed at start.
        self.connect_error: OSError | None = None
        self.away = False  # a line failed to go out, none has since
        self._noticed = -self.NOTICE_EVERY  # time.monotonic() of the last notice
        self._announced = False  # the current absence was said on standard error
        super().__init__(address=path, facility=facility)

    def createSocket(self) -> None:
        self.unixsocket = True
        try:
            self._connect_unixsocket(self.address)
        except OSError as exc:
            self.connect_error = exc
        else:
            self.connect_error = None

    def handleError(self, record: logging.LogRecord) -> None:
        """A line that could not be sent (the daemon stopped or not yet back): said on
        standard error when first seen and at most every NOTICE_EVERY seconds while it
        lasts, without a traceback; the line itself is on standard error already, through
        the stream's handler. Every line tries the socket again (:meth:`_send`), so
        syslog gets lines again as soon as the daemon answers. Anything but an OSError
        is a bug, reported as logging reports it."""
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            super().handleError(record)
            return
        self.away = True
        now = time.monotonic()
        if now - self._noticed < self.NOTICE_EVERY:
            return
        self._noticed = now
        self._announced = True
        self._notice(
            logging.WARNING,
            f"syslog_socket {self.address}: {error.strerror or error}: log lines go to "
            "standard error only until it answers again",
        )

    def _back(self) -> None:
        self.away = False
        if self._announced:
            self._announced = False
            self._notice(logging.INFO, f"syslog_socket {self.address}: sending again")

    @staticmethod
    def _notice(level: int, text: str) -> None:
        """Straight to standard error, as a log line of LOG_FORMAT: through logging it
        would come back to this handler."""
        created = time.time()
        out = _NOTICES.line(
            created=created,
            msecs=(created - int(created)) * 1000,
            name="pop3d",
            pid=_Process.pid,
            level=logging.getLevelName(level),
            text=text,
        )
        with contextlib.suppress(OSError, ValueError):  # standard error closed or full
            sys.stderr.write(out + "\n")
            sys.stderr.flush()

    def direct(self) -> bool:
        return type(self.formatter) is MessageFormatter

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._send(record.levelname, self.format(record))
        except Exception:
            self.handleError(record)

    def write_line(self, name: str, level: int, created: float, text: str) -> None:
        self.acquire()
        try:
            self._send(logging.getLevelName(level), printable(text))
        except RecursionError:
            raise
        except Exception:  # the daemon gone: what logging does with it
            self.handleError(logging.LogRecord(name, level, "", 0, "%s", (text,), None))
        finally:
            self.release()

    def _send(self, level_name: str, message: str) -> None:
        priority = self.encodePriority(self.facility, self.mapPriority(level_name))
        end = "\0" if self.append_nul else ""
        data = f"<{priority}>{self.ident}{message}{end}".encode()
        if self.socket is None:  # closed (logging's shutdown): opened again, as emit() does
            self.createSocket()
            assert self.socket is not None
        try:
            self.socket.send(data)
        except OSError:
            self.socket.close()
            self._connect_unixsocket(self.address)
            self.socket.send(data)
        if self.away:
            self._back()


_NOTICES = LineFormatter(LOG_FORMAT)
_DIRECT = (LineHandler, SyslogLineHandler)


def _direct_handlers(
    logger: logging.Logger, level: int
) -> list[LineHandler | SyslogLineHandler] | None:
    """The handlers ``logging`` would give a record of ``level`` from ``logger``
    (Logger.callHandlers), if every one of them can be written to directly; else None."""
    handlers: list[LineHandler | SyslogLineHandler] = []
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        for handler in current.handlers:
            if level < handler.level:
                continue
            if type(handler) not in _DIRECT or handler.filters:
                return None
            direct = cast(LineHandler | SyslogLineHandler, handler)
            if not direct.direct():
                return None
            handlers.append(direct)
        current = current.parent if current.propagate else None
    return handlers or None  # none at all: logging's last resort decides


def line(logger: logging.Logger, level: int, text: str) -> None:
    """Log ``text`` (already put together) at ``level``, as ``logger.log(level, "%s",
    text)`` would."""
    if not logger.isEnabledFor(level):
        return
    handlers = _direct_handlers(logger, level)
    if handlers is None:
        logger.log(level, "%s", text)
        return
    created = time.time()
    for handler in handlers:
        handler.write_line(logger.name, level, created, text)
