"""``pop3d``: the POP3 service, with Cyrus pop3d's command line.

    pop3d [-C imapd.conf] [-U uses] [-T timeout] [-D] [-s] [-k] [-p ssf] [-H] [-X]

Run by ``pop3d-master`` (which passes the listening socket and CYRUS_SERVICE), or with -X
for exactly one session on stdin/stdout (inetd, xinetd, systemd ``Accept=yes``, transcript
tests). Errors on the command line exit 64, configuration errors 78 (sysexits), each with
one line on stderr: Cyrus 3.x crashes on an unknown option instead. Under -X a failed -s
handshake exits 76 (EX_PROTOCOL): no session took place.
"""

from __future__ import annotations

from pop3d.cli import start

if __name__ == "__main__":  # python -m pop3d.cli.pop3d: held before the imports below (start.py)
    start.hold(start.HELD_WHILE_IMPORTING)

import asyncio
import contextlib
import getopt
import logging
import os
import re
import signal
import socket
import stat
import sys
import time
from dataclasses import dataclass, replace

from pop3d.cli.common import (
    EX_CONFIG,
    EX_OK,
    EX_OSERR,
    EX_PROTOCOL,
    EX_USAGE,
    claim_standard_fds,
    config_exit,
    fail,
    file_named,
    load_config,
    print_usage_if_asked,
    run,
    setup_logging,
    setup_syslog,
)
from pop3d.config import cyrus
from pop3d.config.imapd import DEBUG_COMMAND_MAX, ConfigError, fill_debug_command
from pop3d.server import privileges
from pop3d.server.context import RuntimeOptions, ServiceContext
from pop3d.server.limits import LIMITS_FD_ENV, LocalLimits, MasterLimits
from pop3d.server.worker import (
    STATUS_FD_ENV,
    STOP_SIGNALS,
    Worker,
    hold_hangup,
    ignore_retire,
    ignore_strays,
    release_hangup,
    serve_stdio,
)

PROGRAM = "pop3d"
# every flag, as getopt takes them; pop3d/man/pop3d.8 documents each (a test checks)
GETOPT = "C:U:T:DXskp:H"
USAGE = "usage: pop3d [-C imapd.conf] [-U uses] [-T timeout] [-D] [-s] [-k] [-p ssf] [-H] [-X]"
LISTEN_FDS_ENV = "POP3D_LISTEN_FDS"
KPOP_WITH_TLS = (
    "-k (KPOP) and -s (TLS) cannot be combined: KPOP clients speak Kerberos on the bare connection"
)
# The name of an activated socket that speaks TLS from the first byte (one process serves
# every socket of the unit, so -s cannot say which). Under the master and with -X, -s
# alone decides, as in Cyrus: the master's checks build a service as -s says, and a
# "pop3s" entry without -s had workers turn TLS on anyway, a missing certificate found
# only by workers exiting 78 over and over (found probing).
IMPLICIT_TLS_SERVICE = "pop3s"
KPOP_ON_POP3S = (
    f"-k (KPOP) with a socket named {IMPLICIT_TLS_SERVICE}, which speaks TLS from the first "
    "byte: KPOP clients speak Kerberos on the bare connection"
)
MAXCHILD_ENV = "POP3D_MAXCHILD"
log = logging.getLogger("pop3d")


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
    # ASCII digits only: \d and int() take any script's, so -p '٢٥٦' was -p 256 (found
    # probing), a number nobody reading the command line or cyrus.conf would see. Its
    # length checked before int(), which refuses 4,300 digits with a traceback (found
    # re-probing).
    digits = value.lstrip("0") or "0"
    if not re.fullmatch(r"[0-9]+", value) or len(digits) > len(str(upper)) or int(digits) > upper:
        fail(PROGRAM, EX_USAGE, f"{flag} {value!r}: expected a whole number 0..{upper}\n{USAGE}")
    return int(digits)


def parse_arguments(argv: list[str]) -> Arguments:
    try:
        options, rest = getopt.getopt(argv, GETOPT)
    except getopt.GetoptError as exc:
        fail(PROGRAM, EX_USAGE, f"{exc.msg}\n{USAGE}")
    if rest:
        fail(PROGRAM, EX_USAGE, f"unexpected argument {rest[0]!r}\n{USAGE}")
    args = Arguments()
    for flag, value in options:
        if flag == "-C":
            args.config = file_named(PROGRAM, flag, value)
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
    command = fill_debug_command(template, sys.argv[0], os.getpid(), service)
    if len(command.encode("utf-8", "surrogateescape")) > DEBUG_COMMAND_MAX:
        # Cyrus's snprintf cuts it there, and runs what is left: a command cut short
        # could do anything. Not run.
        print(
            f"{PROGRAM}: debug_command filled in is longer than Cyrus's {DEBUG_COMMAND_MAX} "
            "octets: not run",
            file=sys.stderr,
        )
        return
    # Its own session and process group: a stop (start.stop_while_starting raises
    # SystemExit inside the wait) killed only the shell, and what it ran (a `sleep`, a
    # debugger) went on orphaned, holding pop3d's standard input and output: under inetd,
    # the client's connection (found probing). The whole group is ended before pop3d goes
    # on. Spawned with the stops held, so none comes between the spawn and the wait that
    # ends the group (a SIGTERM inside subprocess.Popen, before it returned, left the
    # command orphaned: seen in a test run); the command starts with no signal held, SIGPIPE at
    # its default.
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        shell = os.posix_spawn(
            "/bin/sh",
            ["sh", "-c", command],
            os.environ,
            setsid=True,
            setsigmask=(),
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
        )
    except OSError as exc:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        print(f"{PROGRAM}: cannot run debug_command: {exc}", file=sys.stderr)
        return
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)  # a stop asked meanwhile: now
        os.waitpid(shell, 0)
    except BaseException:
        _end_group(shell)
        raise


DEBUG_COMMAND_GRACE = 1.0  # seconds between SIGTERM and SIGKILL for the group


def _end_group(leader: int) -> None:
    """SIGTERM to the group ``leader`` leads, SIGKILL to what is left of it after the
    grace; the leader reaped."""
    deadline = time.monotonic() + DEBUG_COMMAND_GRACE
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(leader, signum)
        except ProcessLookupError:
            break  # the group is gone
        while time.monotonic() < deadline and _group_alive(leader):
            time.sleep(0.01)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(leader, 0)


def _group_alive(leader: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(leader, os.WNOHANG)  # reaped once it has exited: a zombie counts for killpg
    try:
        os.killpg(leader, 0)
    except ProcessLookupError:
        return False
    return True


def _ascii_number(text: str) -> int | None:
    """A descriptor or pid from the environment: str.isdigit() takes '²', which int() then
    refuses with a traceback."""
    return int(text) if re.fullmatch(r"[0-9]+", text.strip()) else None


NOT_OPEN = "is not open"
NOT_LISTENING = "is a stream socket that is not listening (a connection)"


def _socket_kind(fd: int) -> str:
    """What descriptor ``fd`` is: "closed", "not a socket", "datagram", "listening" or
    "connection" (a stream socket that is not listening)."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return "closed"
    if not stat.S_ISSOCK(mode):
        return "not a socket"
    with socket.socket(fileno=os.dup(fd)) as probe:  # the duplicate is closed, not fd
        if probe.type != socket.SOCK_STREAM:
            return "datagram"
        listening = probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    return "listening" if listening else "connection"


def _not_listening(fd: int) -> str | None:
    """What descriptor ``fd`` is, if not a listening stream socket (None if it is): a
    connection handed where a listener was expected was taken for one, and the first
    client's arrival ended pop3d with a traceback (found probing)."""
    kind = _socket_kind(fd)
    if kind == "closed":
        return NOT_OPEN
    if kind == "connection":
        return NOT_LISTENING
    return None if kind == "listening" else "is not a stream socket"


def _listening_sockets() -> list[socket.socket]:
    """The sockets pop3d-master hands its workers. The variable is the master's own, yet
    set by hand it gave a traceback (0, standard input) or "cannot write its output"
    (a descriptor not open): found probing."""
    value = os.environ.get(LISTEN_FDS_ENV, "")
    sockets: list[socket.socket] = []
    for item in value.split(","):
        fd = _ascii_number(item)
        if fd is None:
            continue
        problem = _not_listening(fd)
        if problem is not None:
            fail(
                PROGRAM,
                EX_USAGE,
                f"{LISTEN_FDS_ENV}={value}: fd {fd} {problem}; the variable is "
                "pop3d-master's, for its workers",
            )
        sockets.append(socket.socket(fileno=fd))
    return sockets


def _standard_input_problem() -> str | None:
    """Why -X cannot serve a session on standard input (None if it can): a datagram
    socket gave a traceback, and a listening socket took the greeting and pop3d exited 0,
    serving nobody (found probing). Pipes, files and terminals are served as pipes."""
    kind = _socket_kind(0)
    if kind == "datagram":
        return (
            "standard input is a socket that is not a stream (a datagram socket?): "
            "-X serves a connection (inetd: stream, not dgram)"
        )
    if kind == "listening":
        return (
            "standard input is a listening socket: use socket activation without -X, "
            "or inetd nowait"
        )
    return None


# names systemd gives sockets that were not named (FileDescriptorName=): no service
_UNNAMED = frozenset({"unknown", "stored", "connection"})


def systemd_sockets(default_service: str) -> dict[str, list[socket.socket]]:
    """systemd socket activation (sd_listen_fds(3)): the listening sockets passed as fds
    3, 4, ... when ``LISTEN_PID`` is this process, grouped by service name. A socket's
    name (``LISTEN_FDNAMES``, from ``FileDescriptorName=`` or ``--fdname``) is its service:
    ``pop3s`` sockets speak TLS from the first byte, as ``pop3d -s`` does, and
    service-prefixed options (``pop3s_tls_server_cert``) apply to them; an unnamed socket
    belongs to ``default_service``. The variables are removed, as sd_listen_fds does, so
    no child takes them for its own."""
    pid = os.environ.pop("LISTEN_PID", "")
    count = os.environ.pop("LISTEN_FDS", "")
    names = os.environ.pop("LISTEN_FDNAMES", "")
    listen_pid, listen_fds = _ascii_number(pid), _ascii_number(count)
    if listen_pid != os.getpid() or listen_fds is None:
        return {}
    labels = names.split(":") if names else []
    services: dict[str, list[socket.socket]] = {}
    for index in range(listen_fds):
        fd = 3 + index
        # Looked at before a socket object is made of it: socket.socket() of a file or of
        # a descriptor that is not open raised a traceback (found probing).
        problem = _not_listening(fd)
        if problem == NOT_OPEN:
            fail(PROGRAM, EX_USAGE, f"LISTEN_FDS={count}, but fd {fd} is not open")
        if problem is not None:
            hint = (
                ": a socket unit with Accept=yes passes each connection, serve those with pop3d -X"
                if problem == NOT_LISTENING
                else ""
            )
            fail(PROGRAM, EX_USAGE, f"systemd passed fd {fd}, which {problem}{hint}")
        sock = socket.socket(fileno=fd)
        os.set_inheritable(fd, False)
        label = labels[index] if index < len(labels) else ""
        # Without FileDescriptorName= systemd names a socket after its unit, "pop3d.socket"
        # (systemd.socket(5)): unnamed too. Refused as a bad service name for a day (found
        # probing: every unit without that line stopped at start, exit 78).
        unnamed = not label or label in _UNNAMED or label.endswith(".socket")
        name = default_service if unnamed else label
        # A name that is not a service's was served as the default service, with that
        # service's settings instead of its own (pop3_s_tls_required for "pop3_s").
        if (problem := cyrus.name_problem(name)) is not None:
            fail(PROGRAM, EX_CONFIG, f"systemd socket fd {fd} (FileDescriptorName=): {problem}")
        services.setdefault(name, []).append(sock)
    return services


def main(argv: list[str] | None = None) -> int:
    hold_hangup()  # until the loop's handler is in place
    start.stop_while_starting(PROGRAM, start.HELD_WHILE_IMPORTING)
    claim_standard_fds()
    arguments = sys.argv[1:] if argv is None else argv
    if print_usage_if_asked(arguments, USAGE, "pop3d(8)"):
        return 0
    args = parse_arguments(arguments)
    if args.kpop and args.implicit_tls:
        fail(PROGRAM, EX_USAGE, KPOP_WITH_TLS)
    if args.proxy_protocol and args.stdio:
        fail(PROGRAM, EX_USAGE, "-H (PROXY protocol) needs a listening socket, not -X")
    if args.stdio:
        problem = _standard_input_problem()
        if problem is not None:
            fail(PROGRAM, EX_USAGE, problem)
    setup_logging(logging.INFO)
    service = os.environ.get("CYRUS_SERVICE", "pop3")
    if (problem := cyrus.name_problem(service)) is not None:
        fail(PROGRAM, EX_CONFIG, f"CYRUS_SERVICE: {problem}")
    under_master = LISTEN_FDS_ENV in os.environ
    # Under pop3d-master (listening sockets handed down) the master has printed the
    # configuration's warnings already: every worker repeating them says nothing new.
    activated = {} if under_master or args.stdio else systemd_sockets(service)
    # A pop3s socket beside a pop3 one in a socket unit: KPOP waited inside TLS for a
    # client that never speaks TLS (found probing), as -k with -s would.
    if args.kpop and IMPLICIT_TLS_SERVICE in activated:
        fail(PROGRAM, EX_USAGE, KPOP_ON_POP3S)
    config = load_config(PROGRAM, args.config, warn=not under_master)
    # Started as root (inetd, systemd): become cyrus_user before reading the files a
    # session needs, so a file that user cannot read is reported now, as that user.
    try:
        account = privileges.drop(config)
    except ConfigError as exc:
        raise config_exit(PROGRAM, exc.problems) from None
    except OSError as exc:
        fail(PROGRAM, EX_OSERR, f"cannot give up root: {exc}")
    # Under the master, which checked syslog_socket at its start, a worker started while
    # the daemon is away serves anyway: a restart of syslog must not stop the service.
    setup_syslog(PROGRAM, config, service, service, required=not under_master)
    if args.debug:
        _run_debug_command(config.string("debug_command", service), service)
    base = RuntimeOptions(
        service=service,
        implicit_tls=args.implicit_tls,
        external_ssf=args.external_ssf,
        proxy_protocol=args.proxy_protocol,
        kpop=args.kpop,
        max_uses=args.uses,
        reuse_timeout=args.reuse_timeout,
    )
    contexts: dict[str, ServiceContext] = {}
    try:
        for name in activated or {service: []}:
            tls = base.implicit_tls or (name == IMPLICIT_TLS_SERVICE and bool(activated))
            options = replace(base, service=name, implicit_tls=tls)
            try:
                contexts[name] = ServiceContext(config, options)
            except ConfigError as exc:
                problems: list[object] = list(exc.problems)
                if account is not None:
                    problems.append(
                        f"pop3d runs as cyrus_user {account.user} (uid {account.uid}): "
                        "every file it needs must be readable by that user"
                    )
                raise config_exit(PROGRAM, problems) from None
            if not under_master:  # the master has told them, as the configuration's
                server_tls = contexts[name].tls
                for warning in server_tls.warnings if server_tls is not None else ():
                    print(f"{PROGRAM}: {warning}", file=sys.stderr)
        if args.stdio:
            context = contexts[service]
            if context.limits.active:
                log.warning(
                    "maxlogins_per_host/maxlogins_per_user are not enforced under -X "
                    "(one session per process): use pop3d-master or socket activation"
                )
            # the session's own end is in the log; a handshake that failed is an error
            return EX_OK if asyncio.run(serve_stdio(context)) else EX_PROTOCOL
        if activated:
            local = LocalLimits()  # this process is the only one serving these sockets
            for context in contexts.values():
                context.count_logins(local)
            asyncio.run(_serve_activated(contexts, activated))
            return 0
        sockets = _listening_sockets()
        if not sockets:
            fail(
                PROGRAM,
                EX_USAGE,
                "no listening socket: run pop3d from pop3d-master, under systemd socket "
                "activation, or with -X for one session on stdin/stdout",
            )
        context = contexts[service]
        limits_fd = os.environ.get(LIMITS_FD_ENV, "")
        if limits_fd.isdigit():
            channel = socket.socket(fileno=int(limits_fd))
            channel.set_inheritable(False)
            context.count_logins(MasterLimits(channel))
        else:
            context.count_logins(LocalLimits())
        maxchild = int(os.environ.get(MAXCHILD_ENV, "-1"))
        status = os.environ.get(STATUS_FD_ENV, "")
        status_fd = int(status) if status.isdigit() else None
        asyncio.run(Worker(context, maxchild, status_fd).serve(sockets))
        return 0
    finally:
        for context in contexts.values():
            context.close()


async def _serve_activated(
    contexts: dict[str, ServiceContext], sockets: dict[str, list[socket.socket]]
) -> None:
    """One process, one loop, a Worker per service (pop3 and pop3s sockets from one
    socket unit); signals go to all of them."""
    workers = {name: Worker(contexts[name]) for name in sockets}
    loop = asyncio.get_running_loop()
    for name, sock_list in sockets.items():
        log.info(
            "socket activation: service %s on %s",
            name,
            ", ".join(str(sock.getsockname()) for sock in sock_list),
        )
    serving = [
        loop.create_task(workers[name].serve(sock_list, signals=False))
        for name, sock_list in sockets.items()
    ]

    def stop() -> None:
        for worker in workers.values():
            worker.stop()

    def reload() -> None:
        for context in contexts.values():
            context.reload_tls()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop)
    loop.add_signal_handler(signal.SIGHUP, reload)
    ignore_retire(loop)
    ignore_strays(loop)
    release_hangup()
    await asyncio.gather(*serving)


def entry() -> None:
    run(PROGRAM, main)


if __name__ == "__main__":
    entry()
