"""What the three commands share: sysexits codes, one-line errors, logging, config loading."""

from __future__ import annotations

import errno
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NoReturn, TextIO

from pop3d.config import imapd
from pop3d.config.imapd import Config, ConfigError
from pop3d.sasl import registry
from pop3d.server.loglines import (
    LOG_FORMAT,
    LineFormatter,
    LineHandler,
    MessageFormatter,
    SyslogLineHandler,
)

# sysexits.h
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_NOUSER = 67
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_OSERR = 71
EX_CANTCREAT = 73
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_PROTOCOL = 76
EX_NOPERM = 77
EX_CONFIG = 78

DEFAULT_IMAPD_CONF = "/etc/imapd.conf"
DEFAULT_CYRUS_CONF = "/etc/cyrus.conf"


class Exit(Exception):
    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def print_usage_if_asked(argv: list[str], usage: str, page: str) -> bool:
    """``--help`` or ``-h`` alone: the usage on standard output (Cyrus's getopt-style
    commands have no help option; a user trying one should not get exit 64)."""
    if argv not in (["--help"], ["-h"]):
        return False
    print(f"{usage}\nsee {page}")
    return True


def fail(program: str, code: int, message: str) -> NoReturn:
    raise Exit(code, f"{program}: {message}")


def run(program: str, main: object) -> NoReturn:
    """Call ``main()``; turn :class:`Exit` into a one-line message and an exit status.
    A traceback reaches the terminal only for a bug (exit 70)."""
    assert callable(main)
    try:
        code = main()
        if sys.stdout is not None:
            sys.stdout.flush()  # here, where a failure is ours to report, not at exit
    except Exit as exc:
        if exc.message:
            print(exc.message, file=sys.stderr)
        sys.exit(exc.code)
    except KeyboardInterrupt:
        sys.exit(130)
    except OSError as exc:
        if exc.errno not in _OUTPUT_LOST:
            _bug(program)
        # Every command turns its own files' errors into an Exit; what is left is its
        # output: `users >/dev/full`, a closed pipe. Found probing: a traceback, exit 70.
        sys.stdout = None  # nothing more to flush at exit
        print(f"{program}: cannot write its output: {exc.strerror or exc}", file=sys.stderr)
        sys.exit(EX_IOERR)
    except Exception:
        _bug(program)
    sys.exit(code if isinstance(code, int) else EX_OK)


# Errors that say output went nowhere: a full disk or device, a closed pipe or descriptor.
_OUTPUT_LOST = frozenset({errno.ENOSPC, errno.EPIPE, errno.EIO, errno.EBADF, errno.EDQUOT})


def _bug(program: str) -> NoReturn:
    traceback.print_exc()
    print(f"{program}: internal error (a bug: please report it)", file=sys.stderr)
    sys.exit(EX_SOFTWARE)


def claim_standard_fds() -> None:
    """Open /dev/null on whichever of descriptors 0, 1 and 2 is closed. Started with one
    closed (``pop3d -X <&-``), the next file opened took its number: the credential file
    became standard input and was read as the client's commands (found probing). With
    /dev/null there, a closed input is the end of input, a closed output discards."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            opened = os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one
            if opened != fd:  # cannot happen while the lower ones are open; never leak
                os.close(opened)


def config_exit(program: str, problems: Iterable[object]) -> Exit:
    """Exit 78 with every configuration problem on its own line (file:line: ...)."""
    return Exit(EX_CONFIG, "\n".join(f"{program}: {problem}" for problem in problems))


def setup_logging(level: int = logging.INFO) -> None:
    # What no format here shows is not collected for each record (the logging HOWTO's
    # "Optimization"): the caller's file and line (a stack walk), the thread and
    # multiprocessing names.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    handler = LineHandler(sys.stderr)
    handler.setFormatter(LineFormatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
    warnings.showwarning = _log_warning


def _log_warning(  # noqa: PLR0917 - warnings.showwarning's signature
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """A Python warning as one log line of pop3d's (and to syslog with it). Python writes
    one to standard error as two lines, the second the source line, outside the log's
    format: a library's warning (cryptography's, for a certificate name over 64
    characters) was two raw lines in the master's log, once per worker (found probing).
    A warning meant for a file of its own goes there, as logging.captureWarnings does."""
    if file is not None:
        _show_warning(message, category, filename, lineno, file, line)
        return
    logging.getLogger("pop3d").warning(
        "%s: %s (%s:%d)", category.__name__, message, filename, lineno
    )


_show_warning = warnings.showwarning


def setup_syslog(
    program: str,
    config: Config,
    ident: str,
    service: str | None = None,
    *,
    required: bool = True,
) -> None:
    """``syslog_socket``: every ``pop3d`` log line also goes to syslog, tagged as Cyrus tags
    its own (``<syslog_prefix>/<service>[pid]: ...``, the form fail2ban's cyrus filters
    expect), at ``syslog_facility``. Messages go out as they are: the audit trail escapes
    every field it writes (server/audit.py). A socket that does not answer is exit 78 if
    ``required``; else (a worker the master started after the daemon went away: the
    master checked the socket at its own start) the handler keeps trying it."""
    path = config.string("syslog_socket", service)
    if not path:
        return
    prefix = config.string("syslog_prefix", service)
    tag = f"{prefix}/{ident}" if prefix else ident
    try:
        handler = _syslog_handler(config, service, path)
        if required and handler.connect_error is not None:
            raise handler.connect_error
    except OSError as exc:
        raise Exit(EX_CONFIG, f"{program}: {_syslog_problem(config, service, exc)}") from None
    handler.ident = f"{tag}[{os.getpid()}]: "
    handler.setFormatter(MessageFormatter())
    logging.getLogger("pop3d").addHandler(handler)


def _syslog_handler(config: Config, service: str | None, path: str) -> SyslogLineHandler:
    facility = config.string("syslog_facility", service) or "local6"
    return SyslogLineHandler(path, SyslogLineHandler.facility_names[facility])


def _syslog_problem(config: Config, service: str | None, exc: OSError) -> str:
    path = config.string("syslog_socket", service)
    message = f"syslog_socket {path}: {exc.strerror or exc}"
    return str(config.problem_with("syslog_socket", service, message))


def syslog_problem(config: Config) -> str | None:
    """What :func:`setup_syslog` refuses at pop3d-master's start, said for check-config
    (found probing: a syslog_socket where nothing listens was "configuration OK", and the
    master then exited 78)."""
    path = config.string("syslog_socket")
    if not path:
        return None
    try:
        handler = _syslog_handler(config, None, path)
    except OSError as exc:
        return _syslog_problem(config, None, exc)
    handler.close()
    if handler.connect_error is not None:
        return _syslog_problem(config, None, handler.connect_error)
    return None


def file_named(program: str, flag: str, value: str) -> str:
    """A file argument: an empty one (an unset $CONF in a script) is a usage error, where
    it meant the default file, /etc/imapd.conf, the system's (found probing)."""
    if not value:
        fail(program, EX_USAGE, f"{flag} '': an empty file name")
    return value


def load_config(
    program: str,
    path: str | None,
    warn: bool = True,
    report: Callable[[str], None] | None = None,
) -> Config:
    """imapd.conf or exit 78 with every problem on its own line (file:line: ...).
    Warnings are printed only with ``warn``: a process whose parent already printed them
    (a worker of pop3d-master) passes False, so each is printed once, not once a process;
    ``report`` takes them instead of standard error (the master's reload logs them)."""
    target = Path(path or DEFAULT_IMAPD_CONF)
    try:
        config = imapd.load(target)
    except ConfigError as exc:
        raise config_exit(program, exc.problems) from None
    config.problems.extend(registry.config_problems(config))
    if warn:
        for problem in config.warnings:
            if report is not None:
                report(str(problem))
            else:
                print(f"{program}: {problem}", file=sys.stderr)
    return config
