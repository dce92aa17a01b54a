"""``pop3d``: the POP3 service, with Cyrus pop3d's command line.

    pop3d [-C imapd.conf] [-U uses] [-T timeout] [-D] [-s] [-k] [-p ssf] [-H] [-X]

Run by ``pop3d-master`` (which passes the listening socket and CYRUS_SERVICE), or with -X
for exactly one session on stdin/stdout (inetd, xinetd, systemd ``Accept=yes``, transcript
tests). Errors on the command line exit 64, configuration errors 78 (sysexits), each with
one line on stderr: Cyrus 3.x crashes on an unknown option instead. Under -X a failed -s
handshake exits 76 (EX_PROTOCOL): no session took place.
"""

from __future__ import annotations

import asyncio
import getopt
import logging
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass

from pop3d.cli.common import (
    EX_OK,
    EX_PROTOCOL,
    EX_USAGE,
    config_exit,
    fail,
    load_config,
    run,
    setup_logging,
    setup_syslog,
)
from pop3d.config.imapd import ConfigError
from pop3d.server.context import RuntimeOptions, ServiceContext
from pop3d.server.worker import STATUS_FD_ENV, Worker, serve_stdio

PROGRAM = "pop3d"
USAGE = "usage: pop3d [-C imapd.conf] [-U uses] [-T timeout] [-D] [-s] [-k] [-p ssf] [-H] [-X]"
LISTEN_FDS_ENV = "POP3D_LISTEN_FDS"
KPOP_WITH_TLS = (
    "-k (KPOP) and -s (TLS) cannot be combined: KPOP clients speak Kerberos on the bare connection"
)
MAXCHILD_ENV = "POP3D_MAXCHILD"


@dataclass
class Arguments:
    config: str | None = None
    uses: int | None = None
    reuse_timeout: int = 0
    debug: bool = False
    stdio: bool = False
    implicit_tls: bool = False
    kpop: bool = False
    external_ssf: int = 0
    proxy_protocol: bool = False


def _count(flag: str, value: str, upper: int = 2**31 - 1) -> int:
    if not re.fullmatch(r"\d+", value) or int(value) > upper:
        fail(PROGRAM, EX_USAGE, f"{flag} {value!r}: expected a whole number 0..{upper}\n{USAGE}")
    return int(value)


def parse_arguments(argv: list[str]) -> Arguments:
    try:
        options, rest = getopt.getopt(argv, "C:U:T:DXskp:H")
    except getopt.GetoptError as exc:
        fail(PROGRAM, EX_USAGE, f"{exc.msg}\n{USAGE}")
    if rest:
        fail(PROGRAM, EX_USAGE, f"unexpected argument {rest[0]!r}\n{USAGE}")
    args = Arguments()
    for flag, value in options:
        if flag == "-C":
            args.config = value
        elif flag == "-U":
            args.uses = _count(flag, value)
        elif flag == "-T":
            args.reuse_timeout = _count(flag, value)
        elif flag == "-D":
            args.debug = True
        elif flag == "-X":
            args.stdio = True
        elif flag == "-s":
            args.implicit_tls = True
        elif flag == "-k":
            args.kpop = True
        elif flag == "-p":
            args.external_ssf = _count(flag, value, 65535)
        elif flag == "-H":
            args.proxy_protocol = True
    return args


def _run_debug_command(template: str | None, service: str) -> None:
    """-D: Cyrus runs ``debug_command`` formatted with (program, pid, service)."""
    if not template:
        print(f"{PROGRAM}: -D given but debug_command is not set", file=sys.stderr)
        return
    values = iter((sys.argv[0], str(os.getpid()), service))
    command = re.sub(r"%[sd]", lambda _m: next(values, ""), template)
    subprocess.run(command, shell=True, check=False)  # noqa: S602 - the admin's own command


def _listening_sockets() -> list[socket.socket]:
    value = os.environ.get(LISTEN_FDS_ENV, "")
    return [socket.socket(fileno=int(item)) for item in value.split(",") if item.strip().isdigit()]


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    if args.kpop and args.implicit_tls:
        fail(PROGRAM, EX_USAGE, KPOP_WITH_TLS)
    if args.proxy_protocol and args.stdio:
        fail(PROGRAM, EX_USAGE, "-H (PROXY protocol) needs a listening socket, not -X")
    setup_logging(logging.INFO)
    service = os.environ.get("CYRUS_SERVICE", "pop3")
    # Under pop3d-master (listening sockets handed down) the master has printed the
    # configuration's warnings already: every worker repeating them says nothing new.
    config = load_config(PROGRAM, args.config, warn=LISTEN_FDS_ENV not in os.environ)
    setup_syslog(PROGRAM, config, service, service)
    if args.debug:
        _run_debug_command(config.string("debug_command", service), service)
    options = RuntimeOptions(
        service=service,
        implicit_tls=args.implicit_tls,
        external_ssf=args.external_ssf,
        proxy_protocol=args.proxy_protocol,
        kpop=args.kpop,
        max_uses=args.uses,
        reuse_timeout=args.reuse_timeout,
    )
    try:
        context = ServiceContext(config, options)
    except ConfigError as exc:
        raise config_exit(PROGRAM, exc.problems) from None
    try:
        if args.stdio:
            # the session's own end is in the log; a handshake that failed is an error
            return EX_OK if asyncio.run(serve_stdio(context)) else EX_PROTOCOL
        sockets = _listening_sockets()
        if not sockets:
            fail(
                PROGRAM,
                EX_USAGE,
                "no listening socket: run pop3d from pop3d-master, or "
                "with -X for one session on stdin/stdout",
            )
        maxchild = int(os.environ.get(MAXCHILD_ENV, "-1"))
        status = os.environ.get(STATUS_FD_ENV, "")
        status_fd = int(status) if status.isdigit() else None
        asyncio.run(Worker(context, maxchild, status_fd).serve(sockets))
        return 0
    finally:
        context.close()


def entry() -> None:
    run(PROGRAM, main)


if __name__ == "__main__":
    entry()
