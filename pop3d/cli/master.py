"""``pop3d-master [-C imapd.conf] [-M cyrus.conf] [-p pidfile] [-d]``: run the pop3d services
of a cyrus.conf. Foreground by default; -d detaches."""

from __future__ import annotations

from pop3d import __version__
from pop3d.cli import start

if __name__ == "__main__":  # python -m pop3d.cli.master: held before the imports below (start.py)
    start.hold(start.MASTER_HELD_WHILE_IMPORTING)

import contextlib
import getopt
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from pop3d.cli.common import (
    DEFAULT_CYRUS_CONF,
    DEFAULT_IMAPD_CONF,
    EX_CANTCREAT,
    EX_CONFIG,
    EX_OK,
    EX_OSERR,
    EX_USAGE,
    Exit,
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
from pop3d.cli.pop3d import KPOP_WITH_TLS, parse_arguments
from pop3d.config import cyrus
from pop3d.config.imapd import Config, ConfigError, Problem
from pop3d.server import metrics, privileges
from pop3d.server.context import RuntimeOptions, ServiceContext
from pop3d.server.master import ListenError, Master, addresses
from pop3d.server.reload import Loaded, ReloadRefused
from pop3d.server.worker import hold_hangup

PROGRAM = "pop3d-master"
GETOPT = "C:M:p:d"  # each documented in pop3d/man/pop3d-master.8
USAGE = "usage: pop3d-master [-C imapd.conf] [-M cyrus.conf] [-p pidfile] [-d]"

log = logging.getLogger("pop3d.master")


def command_problem(service: cyrus.Service) -> str | None:
    """What is wrong with a service's cmd= as the master would run it (file:line), or None:
    its pop3d options, as pop3d itself parses them. Shared with ``pop3d-admin
    check-config``, which once passed a cmd the master then refused."""
    try:
        args = parse_arguments(list(service.argv[1:]))
    except Exit as exc:
        problem = exc.message.splitlines()[0]
    else:
        if args.stdio:
            problem = "-X is not supported under the master"
        elif args.kpop and args.implicit_tls:
            problem = KPOP_WITH_TLS
        else:
            return None
    return f"{service.path}:{service.line}: service {service.name}: {problem}"


def no_service_problem(master_config: cyrus.MasterConfig) -> str | None:
    if master_config.services:
        return None
    return f"{master_config.path}: no pop3d service in SERVICES"


# Where a TCP socket is bound: (family, address, scope, port)
_Place = tuple[int, str, int, int]
_WILDCARDS = frozenset({"0.0.0.0", "::"})  # noqa: S104 - compared with, never bound


def metrics_problem(config: Config, master_config: cyrus.MasterConfig | None = None) -> str | None:
    """A ``prometheus_listen`` the master cannot serve on (shared with check-config): one
    that does not parse, resolves to nothing, or (given cyrus.conf) is where a service
    listens. Found probing: on a service's address and port it was "configuration OK",
    and the master, its services bound, then failed to bind it (exit 71)."""
    if not config.switch("prometheus_enabled"):
        return None
    text = config.string("prometheus_listen") or ""

    def problem(message: str) -> str:
        return str(config.problem_with("prometheus_listen", None, message))

    try:
        host, port = metrics.parse_listen(text)
    except ValueError as exc:
        return problem(str(exc))
    if 0 < port < 1024 and config.string("cyrus_user"):
        # The endpoint is served once the master is cyrus_user, which may not bind such a
        # port: check-config said OK, the master exited 71 (found probing)
        return problem(
            f"prometheus_listen {text}: port {port} is below 1024, and the master serves "
            "metrics after becoming cyrus_user, which cannot bind it"
        )
    if master_config is None or port == 0:  # port 0: a free one, whichever it is
        return None
    try:  # the address metrics_http.serve binds: the first one
        family, _type, _proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except OSError as exc:  # socket.gaierror
        return problem(f"prometheus_listen {text}: no address to bind ({exc.strerror or exc})")
    mine = (family, str(address[0]), _scope(address), port)
    for service in master_config.services:
        if service.listen.family == socket.AF_UNIX:
            continue
        try:
            found = addresses(service.listen)
        except OSError:
            continue  # said by listen_problems
        if any(_overlap(mine, (f, a[0], _scope(a), a[1])) for f, a in found):
            return problem(
                f"prometheus_listen {text}: service {service.name} listens there "
                f"({service.path}:{service.line}): the master could not bind both"
            )
    return None


def listen_problems(master_config: cyrus.MasterConfig) -> list[str]:
    """Each TCP service's addresses resolved as the master will resolve them: a name that
    resolves to nothing, and a service bound where an earlier one is (the same address and
    port, or that family's wildcard on the port), which the master's bind refuses, exit 71.
    Found probing: "110" beside "127.0.0.1:110", "[::1]:110" beside "[0::1]:110", and
    "nonexist.invalid:110" were "configuration OK". Shared with ``pop3d-admin
    check-config``; the master refuses them at start too (exit 78, not a bind's 71)."""
    problems: list[str] = []
    bound: list[tuple[cyrus.Service, list[_Place]]] = []
    for service in master_config.services:
        if service.listen.family == socket.AF_UNIX:
            continue  # compared as parsed (cyrus.py): a path is the same however resolved
        try:
            found = addresses(service.listen)
        except OSError as exc:  # socket.gaierror
            problems.append(
                str(
                    Problem(
                        service.path,
                        service.line,
                        f"service {service.name}: listen {service.listen}: no address to "
                        f"bind ({exc.strerror or exc})",
                    )
                )
            )
            continue
        places = [(family, address[0], _scope(address), address[1]) for family, address in found]
        for other, taken in bound:
            if any(_overlap(mine, theirs) for mine in places for theirs in taken):
                message = (
                    f"service {service.name}: listen {service.listen} overlaps service "
                    f"{other.name}'s {other.listen} (line {other.line}): the master could not "
                    "bind both"
                )
                problems.append(str(Problem(service.path, service.line, message)))
                break
        bound.append((service, places))
    return problems


def _scope(address: tuple[object, ...]) -> int:
    scope = address[3] if len(address) == 4 else 0
    return scope if isinstance(scope, int) else 0


def _overlap(one: _Place, other: _Place) -> bool:
    if one[0] != other[0] or one[3] != other[3]:
        return False
    return one[1:3] == other[1:3] or one[1] in _WILDCARDS or other[1] in _WILDCARDS


def check_services(
    config_path: str,
    master_config: cyrus.MasterConfig,
    account: privileges.Account | None,
    report: Callable[[str], None] | None = None,
) -> tuple[list[str], dict[str, Config]]:
    """Build every service's context once, exactly as its workers will (as the user they
    run as: a file that user cannot read is named here, not in a worker's crash loop).
    The problems, and each service's configuration. ``report``: where a reload's warnings
    go (at start they are printed)."""
    problems: list[str] = []
    configs: dict[str, Config] = {}
    warned = {config_path}  # its warnings were told as it was read (main(), the reload)
    told: set[str] = set()
    for service in master_config.services:
        problem = command_problem(service)
        if problem is not None:
            problems.append(problem)
            continue
        args = parse_arguments(list(service.argv[1:]))
        path = args.config or config_path
        try:
            config = load_config(PROGRAM, path, warn=path not in warned, report=report)
        except Exit as exc:  # a reload's: at start the first one ends the master anyway
            problems += [line.removeprefix(f"{PROGRAM}: ") for line in exc.message.splitlines()]
            continue
        warned.add(path)
        configs[service.name] = config
        options = RuntimeOptions(
            service=service.name,
            implicit_tls=args.implicit_tls,
            external_ssf=args.external_ssf,
            proxy_protocol=args.proxy_protocol,
            kpop=args.kpop,
        )
        try:
            context = ServiceContext(config, options)
        except ConfigError as exc:
            problems += [f"{p} (service {service.name})" for p in exc.problems]
            continue
        context.close()
        for warning in context.tls.warnings if context.tls is not None else ():
            # Services sharing the settings share the warning: told once
            if str(warning) not in told:
                told.add(str(warning))
                if report is not None:
                    report(str(warning))
                else:
                    print(f"{PROGRAM}: {warning}", file=sys.stderr)
    if problems and account is not None:
        problems.append(
            f"pop3d runs as cyrus_user {account.user} (uid {account.uid}, gid {account.gid}): "
            "every file it needs must be readable by that user"
        )
    return problems, configs


# What a worker imports before it serves (python -m pop3d), and where it found pop3d and
# which version.
_WORKER_IMPORTS = "import pop3d.cli.pop3d, pop3d; print(pop3d.__version__, pop3d.__file__)"
WORKER_START_TIMEOUT = 60.0


def worker_start_problem(config: Config, account: privileges.Account | None) -> Problem | None:
    """Why the master, once it is ``account``, could not start a worker, or None: this
    interpreter, run as that account with the environment workers get, must import pop3d
    from where the master did. Asked as root, before anything is bound or written; nothing
    to ask when root is not given up. Found probing: with the virtualenv in root's private
    home, check-config said "configuration OK"; the master, become cyrus_user, logged
    "cannot start a worker: Permission denied", died with a traceback (exit 70) and left
    its pid file, which cyrus_user may not remove. Shared with check-config."""
    if account is None or os.geteuid() != 0:
        return None
    interpreter = sys.executable
    real = os.path.realpath(interpreter)
    shown = interpreter if real == interpreter else f"{interpreter} (that is {real})"
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # pop3d/cli/..
    try:
        done = subprocess.run(
            [interpreter, "-c", _WORKER_IMPORTS],
            user=account.uid,
            group=account.gid,
            extra_groups=os.getgrouplist(account.user, account.gid),
            env=privileges.environment(account),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=WORKER_START_TIMEOUT,
            check=False,
        )
    except OSError as exc:
        why = f"cannot run the interpreter {shown}: {exc.strerror or exc}"
    except subprocess.TimeoutExpired:
        why = f"the interpreter {shown} did not import pop3d in {WORKER_START_TIMEOUT:.0f} s"
    else:
        version, _, where = done.stdout.decode("utf-8", "replace").strip().partition(" ")
        found = os.path.dirname(where)
        if done.returncode != 0:
            why = f"cannot import pop3d from {package} with {shown}: {_error_in(done.stderr)}"
        elif os.path.realpath(found) == os.path.realpath(package) or version == __version__:
            # Another copy of this version will do (a checkout the master was started in,
            # which the account cannot read, beside the same release installed)
            return None
        else:  # this one it cannot read; the one it can is another release
            why = (
                f"imports pop3d {version} from {found}, not {__version__} from {package}, "
                f"with {shown}"
            )
    message = (
        f"cyrus_user {account.user} (uid {account.uid}) {why}: the interpreter, its "
        "libraries and the pop3d package must be readable by the user pop3d runs as"
    )
    return config.problem_with("cyrus_user", None, message)


def _error_in(stderr: bytes) -> str:
    """The line of a failed interpreter's standard error that names its error."""
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines()]
    named = [line for line in lines if re.match(r"[\w.]*(Error|Exception)\b", line)]
    return (named or [line for line in lines if line] or ["no error said"])[-1]


def _reloader(
    config_path: str, cyrus_path: str, account: privileges.Account | None
) -> Callable[[], Loaded]:
    """The master's SIGHUP check (server/reload.py): both files read again and checked as
    at start; ReloadRefused with what start-up would have refused."""

    def check() -> Loaded:
        def warn(message: str) -> None:
            log.warning("reload: %s", message)

        try:
            config = load_config(PROGRAM, config_path, report=warn)
            master_config = cyrus.load(cyrus_path)
        except Exit as exc:
            raise ReloadRefused(
                [line.removeprefix(f"{PROGRAM}: ") for line in exc.message.splitlines()]
            ) from None
        except ConfigError as exc:
            raise ReloadRefused([str(p) for p in exc.problems]) from None
        for problem in master_config.problems:
            warn(str(problem))
        if (missing := no_service_problem(master_config)) is not None:
            raise ReloadRefused([missing])
        if listening := listen_problems(master_config):
            raise ReloadRefused(listening)
        if (unservable := metrics_problem(config, master_config)) is not None:
            raise ReloadRefused([unservable])
        problems, configs = check_services(config_path, master_config, account, report=warn)
        if problems:
            raise ReloadRefused(problems)
        return Loaded(master_config, config, configs)

    return check


def _running_master(path: Path) -> int | None:
    """The pid a pid file names, if that process is alive and a pop3d master: a second
    master given the same file overwrote it, and removed it when it stopped, leaving the
    first without one (found probing; Cyrus's master locks its pid file and refuses)."""
    try:
        pid = int(path.read_text(encoding="ascii", errors="replace").strip() or "0")
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if pid > 0 else []
    except (OSError, ValueError):
        return None
    return pid if pid != os.getpid() and any(map(_names_the_master, argv)) else None


def _names_the_master(arg: bytes) -> bool:
    """An argument a pop3d master runs with: the console script, ``-m pop3d.cli.master``,
    or start.py's entry. Not a word anywhere: a process reading /var/log/pop3d-master.log
    whose pid a stale pid file named kept the master from starting (found probing)."""
    return (
        os.path.basename(arg) == b"pop3d-master"
        or arg == b"pop3d.cli.master"
        or b"from pop3d.cli.start import master" in arg
    )


def _write_pidfile(path: Path) -> None:
    """Atomically: whoever reads the file sees no file or the whole pid, never half.
    Called as root, before the drop, as Cyrus's master writes its own: the pid file's
    folder (/run) is root's, and a pid file cyrus_user could write would let a worker
    taken over name the process an init script's ``kill $(cat ...)`` hits. Exit 73 if it
    cannot be written.

    The folder may be one others can write (/tmp, a misconfigured /run/pop3d), and root
    follows their links there: the temporary has a name no one can guess, made O_EXCL and
    O_NOFOLLOW (mkstemp), and the rename replaces a link planted at ``path`` rather than
    writing through it. A predictable ``.NAME.PID`` opened with O_TRUNC let a local user
    have root overwrite any file with the pid (found probing)."""
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as out:
                os.fchmod(fd, 0o644)  # not mkstemp's 0600: monitoring reads it as itself
                out.write(f"{os.getpid()}\n")
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
    except OSError as exc:
        fail(PROGRAM, EX_CANTCREAT, f"cannot write the pid file {path}: {exc.strerror or exc}")


def _claim_pidfile(path: Path) -> None:
    if (other := _running_master(path)) is not None:
        fail(PROGRAM, EX_CANTCREAT, f"pid file {path}: pop3d-master (pid {other}) is running")
    _write_pidfile(path)


def _daemonize() -> int:
    """Fork: in the child, the leader of a new session, return the pipe's end on which it
    says it is ready (:func:`_ready`). The parent waits for that and exits 0, or, if the
    daemon exits first, exits with its status; the daemon's error went to standard error,
    which it keeps until it is ready. Cyrus's master waits on its startup pipe the same
    way: a parent that exited 0 at the fork reported a daemon that then died of a taken
    metrics port or a pid file it could not write (found probing). One fork, as Cyrus:
    the parent must be the daemon's to read its exit status, and the daemon never opens
    a terminal that could become its controlling one."""
    sys.stdout.flush()
    sys.stderr.flush()
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(reading)
        os.setsid()
        return writing
    os.close(writing)
    # A stop asked of this parent is the daemon's: it stops (exit 0, its own handlers or
    # start.py's) and this parent then exits with its status. Left to start.py's handler,
    # the parent said "stopped" and exited 0 while the daemon went on serving.
    for signum in start.MASTER_HELD_WHILE_IMPORTING:
        signal.signal(signum, lambda signum, _frame: os.kill(pid, signum))
    if os.read(reading, 1):
        os._exit(EX_OK)  # not sys.exit: the sockets and their clean-up are the daemon's
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code < 0:
        print(f"{PROGRAM}: the daemon was killed by signal {-code} as it started", file=sys.stderr)
        code = 128 - code
    os._exit(code)


def _ready(started: int) -> None:
    """Standard input, output and error on /dev/null, then tell the parent: once it has
    exited, nothing of the daemon holds the terminal or a caller's pipes."""
    sys.stdout.flush()
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    os.write(started, b"\n")
    os.close(started)


def main(argv: list[str] | None = None) -> int:
    hold_hangup()  # until Master.run's handler is in place
    start.stop_while_starting(PROGRAM, start.MASTER_HELD_WHILE_IMPORTING)  # catch_signals'
    claim_standard_fds()
    arguments = sys.argv[1:] if argv is None else argv
    if print_usage_if_asked(arguments, USAGE, "pop3d-master(8)"):
        return 0
    try:
        options, rest = getopt.getopt(arguments, GETOPT)
    except getopt.GetoptError as exc:
        fail(PROGRAM, EX_USAGE, f"{exc.msg}\n{USAGE}")
    if rest:
        fail(PROGRAM, EX_USAGE, f"unexpected argument {rest[0]!r}\n{USAGE}")
    flags = {flag: file_named(PROGRAM, flag, value) for flag, value in options if flag != "-d"}
    flags.update((flag, "") for flag, _value in options if flag == "-d")
    config_path = flags.get("-C", DEFAULT_IMAPD_CONF)
    cyrus_path = flags.get("-M", DEFAULT_CYRUS_CONF)
    setup_logging(logging.INFO)
    config = load_config(PROGRAM, config_path)
    try:
        master_config = cyrus.load(cyrus_path)
    except ConfigError as exc:
        raise config_exit(PROGRAM, exc.problems) from None
    for warning in master_config.problems:
        print(f"{PROGRAM}: {warning}", file=sys.stderr)
    if (problem := no_service_problem(master_config)) is not None:
        fail(PROGRAM, EX_CONFIG, problem)
    if listening := listen_problems(master_config):  # as check-config says them
        raise config_exit(PROGRAM, listening)
    if (problem := metrics_problem(config, master_config)) is not None:  # before any bind
        fail(PROGRAM, EX_CONFIG, problem)
    try:
        account = privileges.target(config)  # root without cyrus_user: before any bind
    except ConfigError as exc:
        raise config_exit(PROGRAM, exc.problems) from None
    if (cannot := worker_start_problem(config, account)) is not None:
        raise config_exit(PROGRAM, [cannot])
    master = Master(config_path, master_config, config)
    try:
        master.bind_all()
    except ListenError as exc:
        fail(PROGRAM, EX_OSERR, str(exc))
    listen = config.string("prometheus_listen") or ""
    # Detached before the pid file, which names the daemon
    started = _daemonize() if "-d" in flags else None
    pidfile = Path(flags["-p"]) if "-p" in flags else None
    master.catch_signals()
    if pidfile is not None:
        _claim_pidfile(pidfile)
    try:
        return _serve(master, config_path, cyrus_path, listen, started=started)
    finally:
        if pidfile is not None:
            _release_pidfile(pidfile)


def _release_pidfile(path: Path) -> None:
    """Remove the pid file if it names us still: another master's is not ours to take.
    Left behind if cyrus_user may not remove it from its folder (root's /run): the init
    system's to remove then, as with Cyrus, whose master never does. Read as bytes: after
    the drop, a codec Python imports on first use may be one cyrus_user cannot read
    (found probing: read_text(encoding="ascii") raised LookupError, a traceback and exit
    70 in place of the master's exit status)."""
    with contextlib.suppress(OSError):
        if path.read_bytes().strip() == str(os.getpid()).encode():
            path.unlink()


def _serve(
    master: Master,
    config_path: str,
    cyrus_path: str,
    listen: str,
    *,
    started: int | None,
) -> int:
    # Bound (as root for ports below 1024); now become cyrus_user before any worker
    # exists, and check every service as that user: a file it cannot read stops us here.
    master_config, config = master.cyrus, master.config
    try:
        account = privileges.drop(config)
    except ConfigError as exc:
        raise config_exit(PROGRAM, exc.problems) from None
    except OSError as exc:
        fail(PROGRAM, EX_OSERR, f"cannot give up root: {exc}")
    problems, configs = check_services(config_path, master_config, account)
    if problems:
        raise config_exit(PROGRAM, problems)
    master.loaded = Loaded(master_config, config, configs)
    master.check = _reloader(config_path, cyrus_path, account)
    setup_syslog(PROGRAM, config, PROGRAM)  # after -d: the tag carries the pid
    try:
        master.start_metrics()  # after -d too: the endpoint is a thread
    except OSError as exc:
        fail(PROGRAM, EX_OSERR, f"cannot serve metrics on {listen}: {exc.strerror or exc}")
    if started is not None:
        _ready(started)
    return master.run()


def entry() -> None:
    run(PROGRAM, main)


if __name__ == "__main__":
    entry()
