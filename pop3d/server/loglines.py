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

import logging
import logging.handlers
import os
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
    in :meth:`_send`, and send it as it does (reconnected once if the daemon restarted)."""

    if TYPE_CHECKING:  # SysLogHandler's own, which typeshed does not declare
        socket: Socket | None

        def _connect_unixsocket(self, address: object) -> None: ...

    def __init__(self, path: str, facility: int) -> None:
        super().__init__(address=path, facility=facility)

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
