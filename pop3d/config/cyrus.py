"""cyrus.conf: the ``SERVICES`` section, which says what ``pop3d-master`` listens on.

Syntax as Cyrus's master/masterconf.c reads it: sections ``NAME { ... }``, one entry per
line, ``name key=value key="quoted value" ...``, ``#`` comments. ``START``, ``EVENTS`` and
``DAEMON`` are parsed for syntax and otherwise ignored, as are services whose ``cmd`` is not
``pop3d`` (a shared cyrus.conf also runs imapd, lmtpd ...), each with a warning.

``listen`` takes Cyrus's forms: ``"110"``, ``"pop3"`` (a name from /etc/services; ``"kpop"``
is 1109 when the file has no such line, as on Debian),
``"127.0.0.1:1110"``, ``"[::1]:1110"``, ``"host:port"``, or ``"/path"`` (a unix socket).
As in Cyrus's master, a port alone means every address of every family ``proto`` allows
(``tcp``: IPv4 and IPv6, ``tcp4``, ``tcp6``), and a host name every address it resolves to:
the master binds each (server/master.py).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import socket
from dataclasses import dataclass, field
from pathlib import Path

from pop3d.config.imapd import ConfigError, Problem, Unreadable, lines, not_utf8, read_text

_SECTIONS = frozenset({"START", "SERVICES", "EVENTS", "DAEMON"})
_SERVICE_KEYS = frozenset(
    {"cmd", "listen", "proto", "prefork", "maxchild", "maxforkrate", "maxfds", "babysit"}
)
# An entry's name: ASCII letters and digits, as Cyrus's master/masterconf.c reads it
# (process_section: "bad character '%c' in name", EX_CONFIG). A service's name is also the
# prefix of its imapd.conf keys, split at the first "_" (pop3s_tls_required): a service
# "pop3_s" had its own "pop3_s_tls_required: yes" read as the unknown option
# "s_tls_required" of a service "pop3", and took plaintext logins (found probing).
_NAME = re.compile(r"[A-Za-z0-9]+")
# The most workers a service may ask for: per core, and at least. A worker is an event loop
# serving thousands of connections and a Python process of tens of MiB; past the cores
# more only cost memory, and a typo (prefork=100000) would have the master start
# processes until the machine runs out of memory.
_WORKERS_PER_CORE = 8
_WORKERS_AT_LEAST = 64


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity: ``taskset``, cgroup cpusets),
    at least 1; Python 3.13's ``os.process_cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity call on this platform
        return max(1, os.cpu_count() or 1)


def most_workers() -> int:
    """The largest ``prefork`` a service may have on this machine."""
    return max(_WORKERS_AT_LEAST, _WORKERS_PER_CORE * available_cores())


@dataclass(frozen=True, slots=True)
class Listen:
    # AF_INET/AF_INET6 for an address or a name proto limits to one family, AF_UNSPEC for a
    # name (or, host "", every address) of either, AF_UNIX for a socket path
    family: int
    host: str  # address, name, "" (every address), or the socket path for AF_UNIX
    port: int

    def __str__(self) -> str:
        if self.family == socket.AF_UNIX:
            return self.host
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host or '*'}:{self.port}"


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    argv: tuple[str, ...]
    listen: Listen
    prefork: int
    maxchild: int  # -1: unlimited
    path: str
    line: int


@dataclass
class MasterConfig:
    path: str
    services: list[Service] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


# Names a system's /etc/services may lack. KPOP's 1109 was never IANA-registered (fetchmail
# hardcodes it) and Debian's file has no "kpop" line; a listed name still wins.
WELL_KNOWN_PORTS = {"kpop": 1109}


def is_pop3d_command(argv: tuple[str, ...]) -> bool:
    return bool(argv) and os.path.basename(argv[0]) == "pop3d"


def _port(text: str) -> int:
    # ASCII only: str.isdigit() and int() take any script's digits, and "٢٥٠١٠" was a port
    if text.isascii() and text.isdigit():
        port = int(text)
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is out of range")
        return port
    try:
        return socket.getservbyname(text, "tcp")
    except OSError:
        if text in WELL_KNOWN_PORTS:
            return WELL_KNOWN_PORTS[text]
        raise ValueError(f"unknown service name {text!r} (not in /etc/services)") from None


def parse_listen(text: str, proto: str = "tcp") -> Listen:
    if text.startswith("/"):
        return Listen(socket.AF_UNIX, text, 0)
    bracketed = text.startswith("[")
    if bracketed:
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"listen {text!r}: expected [address]:port")
    else:
        host, _, port = text.rpartition(":")
    if bracketed or ":" in host:
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"listen {text!r}: {host} is not an IPv6 address") from None
        if address.ipv4_mapped is not None:  # an IPV6_V6ONLY socket cannot bind it (EINVAL)
            raise ValueError(
                f"listen {text!r}: an IPv4-mapped address; write {address.ipv4_mapped}:{port}"
            )
        if proto == "tcp4":
            raise ValueError(f"listen {text!r}: an IPv6 address, but proto=tcp4")
        return Listen(socket.AF_INET6, host, _port(port))
    if host and all(c.isdigit() or c == "." for c in host):
        try:  # a numeric address must be one: "999.1.1.1" is not a host name either
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"listen {text!r}: {host} is not an IPv4 address") from None
        if proto == "tcp6":
            raise ValueError(f"listen {text!r}: an IPv4 address, but proto=tcp6")
        return Listen(socket.AF_INET, host, _port(port))
    # A name or every address: whatever proto's families resolve it to (Cyrus's master
    # binds each; binding 0.0.0.0 alone left a default service unreachable over IPv6, and
    # "localhost" reachable on 127.0.0.1 but not ::1).
    return Listen(_FAMILIES[proto], host, _port(port))


_FAMILIES = {"tcp": socket.AF_UNSPEC, "tcp4": socket.AF_INET, "tcp6": socket.AF_INET6}


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a service's name, or None: cyrus.conf's, and the one pop3d is
    given without the master (``CYRUS_SERVICE``, a systemd socket's name)."""
    if _NAME.fullmatch(name):
        return None
    if not name:
        return "an empty name"
    bad = next((c for c in name if not (c.isascii() and c.isalnum())), "")
    return (
        f"bad character {bad!r} in the name {name!r}: letters and digits only, as in "
        "Cyrus (a service's name prefixes its imapd.conf keys up to the first '_')"
    )


def _entry(line: str, path: str, number: int) -> tuple[str, dict[str, str]]:
    try:
        tokens = shlex.split(line, comments=True, posix=True)
    except ValueError as exc:
        raise ValueError(f"cannot parse entry: {exc}") from None
    if not tokens or not tokens[0]:
        raise ValueError(f"expected an entry name, got {line.strip()!r}")
    if (problem := name_problem(tokens[0])) is not None:
        raise ValueError(problem)
    values: dict[str, str] = {}
    for token in tokens[1:]:
        key, sep, value = token.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {token!r}")
        values[key] = value
    return tokens[0], values


def _whole_number(values: dict[str, str], key: str, default: str) -> int:
    """ASCII digits, a minus sign allowed (maxchild=-1): int() also takes any script's
    digits, "_" and "+", so prefork="٢" started two workers that nobody reading the file
    would count (found re-probing); a number of more than ten digits is refused before
    int(), which refuses 4,300 with a traceback."""
    text = values.get(key, default)
    stripped = text.strip()
    if not re.fullmatch(r"-?[0-9]{1,10}", stripped):
        raise ValueError(f"{key}={text!r} is not a whole number")
    return int(stripped)


def _service(name: str, values: dict[str, str], path: str, number: int, out: MasterConfig) -> None:
    def warn(message: str) -> None:
        out.problems.append(Problem(path, number, message, "warning"))

    def error(message: str) -> None:
        out.problems.append(Problem(path, number, message))

    for key in values:
        if key not in _SERVICE_KEYS:
            warn(f"service {name}: unknown key {key!r} (ignored)")
    if "cmd" not in values or "listen" not in values:
        error(f"service {name}: cmd= and listen= are required")
        return
    try:
        argv = tuple(shlex.split(values["cmd"]))
    except ValueError as exc:  # cmd='pop3d "x': the quotes inside the value are unbalanced
        error(f"service {name}: cannot parse cmd: {exc}")
        return
    if not is_pop3d_command(argv):
        warn(f"service {name}: {argv[0] if argv else '(empty cmd)'} is not pop3d (skipped)")
        return
    proto = values.get("proto", "tcp")
    if proto not in ("tcp", "tcp4", "tcp6"):
        error(f"service {name}: proto={proto} is not supported (tcp, tcp4, tcp6)")
        return
    try:
        listen = parse_listen(values["listen"], proto)
        prefork = _whole_number(values, "prefork", "0")
        maxchild = _whole_number(values, "maxchild", "-1")
    except ValueError as exc:
        error(f"service {name}: {exc}")
        return
    if prefork < 0:
        error(f"service {name}: prefork={prefork} must not be negative")
        return
    if maxchild < -1:
        error(f"service {name}: maxchild={maxchild}: -1 (no limit) or a number of sessions")
        return
    if prefork > most_workers():
        error(
            f"service {name}: prefork={prefork} is more workers than this machine can use "
            f"(at most {most_workers()}: {_WORKERS_PER_CORE} per core, {_WORKERS_AT_LEAST} "
            "in any case; one worker serves thousands of connections)"
        )
        return
    if 0 < maxchild < prefork:
        warn(
            f"service {name}: prefork={prefork} is more than maxchild={maxchild}: "
            f"{maxchild} workers (each needs room for a session)"
        )
        prefork = maxchild
    if any(s.name == name for s in out.services):
        error(f"service {name} is defined twice")
        return
    for other in out.services:
        if _same_place(other.listen, listen):  # the master's second bind would fail (exit 71)
            error(f"service {name}: listens where service {other.name} does (line {other.line})")
            return
    out.services.append(Service(name, argv, listen, prefork, maxchild, path, number))


def _same_place(one: Listen, other: Listen) -> bool:
    """Written alike, or one unix socket path spelled two ways ("/x//s", "/x/./s"). TCP
    addresses spelled apart that overlap ("[0::1]" and "[::1]", a port alone and an address
    on it) are found once resolved, by ``pop3d-admin check-config``."""
    if one.family == other.family == socket.AF_UNIX:
        return os.path.normpath(one.host) == os.path.normpath(other.host)
    return one == other


def parse_text(text: str, path: str) -> MasterConfig:
    out = MasterConfig(path)
    section: str | None = None
    for number, raw in enumerate(lines(text), 1):
        line = raw.split("#", 1)[0].strip() if '"' not in raw else raw.strip()
        if not line or line.startswith("#"):
            continue
        if not_utf8(line):
            out.problems.append(Problem(path, number, "not UTF-8"))
            continue
        if section is None:
            # Cyrus's masterconf_getsection compares a section's name case-insensitively
            # but for its first letter, which must be as written: "Services {" is
            # SERVICES, and "services {" a section Cyrus skips, every service in it.
            # "EVENTS { }" on one line: an empty section, as Cyrus reads it (refused until
            # found re-probing)
            match = re.fullmatch(r"([A-Za-z]+)\s*\{(\s*\})?", line)
            name = match.group(1).upper() if match else ""
            if name not in _SECTIONS:
                out.problems.append(Problem(path, number, f"expected a section, got {line!r}"))
                continue
            if match and not match.group(1)[0].isupper():
                message = (
                    f"section {match.group(1)!r}: Cyrus's master reads {name} only with a "
                    "capital first letter, and skips this one"
                )
                out.problems.append(Problem(path, number, message))  # its entries checked
            section = None if match and match.group(2) else name
            continue
        if line == "}":
            section = None
            continue
        try:
            name, values = _entry(line, path, number)
        except ValueError as exc:
            out.problems.append(Problem(path, number, str(exc)))
            continue
        if section == "SERVICES":
            _service(name, values, path, number, out)
    if section is not None:
        out.problems.append(Problem(path, 0, f"section {section} is not closed with '}}'"))
    return out


def load(path: str | Path) -> MasterConfig:
    try:
        text = read_text(path)
    except Unreadable as exc:
        raise ConfigError([Problem(str(path), 0, f"cannot read: {exc}")]) from None
    config = parse_text(text, str(path))
    errors = [p for p in config.problems if p.severity == "error"]
    if errors:
        raise ConfigError(config.problems)
    return config
