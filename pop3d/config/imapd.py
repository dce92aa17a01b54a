"""imapd.conf, parsed as Cyrus does: ``key: value`` lines, ``#`` comments, blank lines,
``@include: file``, keys case-insensitive, and service-prefixed overrides
(``pop3s_allowplaintext`` wins over ``allowplaintext`` for the service named ``pop3s`` in
cyrus.conf).

Strictness: a value that does not parse is an error with file:line (the server refuses to
start, exit 78); an unknown key is a warning. Keys that other Cyrus daemons read are known
and ignored, so a site's shared imapd.conf checks clean.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pop3d.config.options import (
    NO_EFFECT,
    OPTIONS,
    OTHER_CYRUS_OPTIONS,
    RENAMED,
    SERVER_WIDE,
    Kind,
    Option,
)

_TRUE = frozenset({"1", "yes", "on", "t", "true"})
_FALSE = frozenset({"0", "no", "off", "f", "false"})
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
# Numbers as Cyrus reads them, ASCII digits only ([0-9]: \d and int() also take any
# script's digits, and "argon2_passes: \u0665" was 5). An integer as strtol(p, &end, 0) in
# libconfig.c: a sign, then 0x hexadecimal, 0 octal or decimal; a duration as
# config_parseduration: an optional "-", then numbers each with a unit (d, h, m, s), the
# last one's unit the option's own if it has none.
_INTEGER = re.compile(r"([+-]?)(?:0[xX]([0-9a-fA-F]+)|(0[0-7]*)|([1-9][0-9]*))")
_DURATION = re.compile(r"(-?)((?:[0-9]+[dhms])+)")
_DURATION_PART = re.compile(r"([0-9]+)([dhms])")
_DIGITS_MAX = 20  # past any value an option may have: int() of 4,300 digits raises
_PARTITION = re.compile(r"(?:meta|archive|search)?partition-[a-z0-9_-]+")
_MAX_INCLUDE_DEPTH = 8
_MAX_FILE = 4 << 20  # a config file is a few KiB; /dev/zero is not one


class Unreadable(Exception):
    """A config file that cannot be read as one; the text says why."""


def read_text(path: str | Path) -> str:
    """A config file's text, read as Cyrus reads it: bytes split into lines on LF only
    (:func:`lines`), so bytes that are not UTF-8 matter only where a line is used, not in
    a comment. Only a regular file of at most 4 MiB: a FIFO would hang the reader and
    /dev/zero fill its memory. A UTF-8 byte-order mark is dropped."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise Unreadable(exc.strerror or str(exc)) from None
    except ValueError:
        raise Unreadable("NUL in the file name") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISCHR(info.st_mode) and info.st_rdev == os.stat(os.devnull).st_rdev:
            return ""  # "@include: /dev/null", a way to include nothing (found probing)
        if not stat.S_ISREG(info.st_mode):
            raise Unreadable("not a regular file")
        chunks, size = [], 0
        while size <= _MAX_FILE and (chunk := os.read(fd, 1 << 16)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise Unreadable(exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
    if size > _MAX_FILE:
        raise Unreadable(f"larger than {_MAX_FILE >> 20} MiB")
    return b"".join(chunks).decode("utf-8", "surrogateescape").removeprefix("\ufeff")


def lines(text: str) -> list[str]:
    """``text`` split on LF only, as Cyrus's config reader does: str.splitlines() also
    split at a form feed, a lone CR or U+2028 in a comment, and every line number after
    it was wrong. A CR before the LF goes with the line's other trailing space."""
    return text.split("\n")


def _joined_lines(text: str) -> Iterator[tuple[int, str, int | None]]:
    """(first line number, line, last line number) of each line of ``text``, a line
    that ends with a backslash joined to the next without it, as Cyrus's
    config_read_file does (a comment's too). The last line number is None for a line
    continued past the end of the file, which Cyrus drops."""
    physical = lines(text)
    if physical and not physical[-1]:
        physical.pop()  # what follows the last LF is no line
    first, pending = 0, None
    for number, raw in enumerate(physical, 1):
        if pending is None:
            first, pending = number, raw
        else:
            pending += raw
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        yield first, pending, number
        pending = None
    if pending is not None:
        yield first, pending, None


def not_utf8(line: str) -> bool:
    """A line holding bytes that were not UTF-8 (:func:`read_text` kept them apart)."""
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    line: int
    message: str
    severity: str = "error"  # or "warning"

    def __str__(self) -> str:
        # Line 0: a problem of the file as a whole, or of a flag or an unset option; "file:0:"
        # would send the reader to a line that does not exist (gcc's "file: error:" form).
        where = f"{self.path}:{self.line}" if self.line > 0 else self.path
        return f"{where}: {self.severity}: {self.message}"


class ConfigError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True, slots=True)
class Setting:
    value: object
    path: str
    line: int


def parse_switch(text: str) -> bool | None:
    """``text`` as Cyrus's config_parse_switch reads it, by its first letters and in their
    case: 0, n, f or "of" is no ("nope", "false"), 1, y, t or "on" yes ("yes", "true");
    None for anything else ("Yes", "oui", "")."""
    if text[:1] in ("0", "n", "f") or text[:2] == "of":
        return False
    if text[:1] in ("1", "y", "t") or text[:2] == "on":
        return True
    return None


# Cyrus reads a switch's words as on/off for an enum (libconfig.c, OPT_ENUM): "virtdomains:
# yes" is on.
_ENUM_SWITCH = {
    **dict.fromkeys(("1", "yes", "t", "true"), "on"),
    **dict.fromkeys(("0", "no", "f", "false"), "off"),
}


# What Cyrus's libconfig takes for blanks around a value (Uisspace): ASCII only
_BLANKS = " \t\r\n\v\f"


def parse_value(option: Option, raw: str) -> object:
    """The typed value of ``raw`` for ``option``; ValueError with a message if it is not."""
    text = raw.strip(_BLANKS)
    if option.kind is Kind.SWITCH:
        switch = parse_switch(text)
        if switch is None:
            raise ValueError(
                f"{option.name}: {raw!r} is not a switch (yes/no, on/off, 1/0, true/false, "
                "in lower case)"
            )
        return switch
    if option.kind is Kind.INT:
        number = parse_integer(text)
        if number is None:
            raise ValueError(
                f"{option.name}: {raw!r} is not an integer (decimal, 0x hexadecimal or, with "
                "a leading 0, octal, as Cyrus reads it)"
            )
        _check_minimum(option, number, raw)
        return number
    if option.kind is Kind.DURATION:
        seconds = parse_duration(text, option.unit)
        if seconds is None:
            raise ValueError(
                f"{option.name}: {raw!r} is not a duration (a number of "
                f"{_unit_name(option.unit)}, or e.g. 1h30m, 45s)"
            )
        if seconds < 0 and not option.negative:
            raise ValueError(f"{option.name}: {raw!r} must not be negative")
        if seconds < -_MAXIMUM:
            minimum = _maximum_text(option)
            raise ValueError(f"{option.name}: {raw!r} is below the minimum -{minimum}")
        if seconds >= 0:
            _check_minimum(option, seconds, raw)
        return seconds
    if option.kind is Kind.ENUM:
        lowered = text.lower()
        lowered = _ENUM_SWITCH.get(lowered, lowered)
        if lowered not in option.choices:
            raise ValueError(f"{option.name}: {raw!r} is not one of {', '.join(option.choices)}")
        return lowered
    return text


_MAXIMUM = 2**31 - 1  # Cyrus's int; as seconds, 68 years


def _check_minimum(option: Option, number: int, raw: str) -> None:
    if option.minimum is not None and number < option.minimum:
        raise ValueError(f"{option.name}: {raw!r} is below the minimum {option.minimum}")
    # Found probing: "poptimeout: 9...9" (400 digits) checked clean, then every process
    # died converting it to a float for the event loop.
    if number > _MAXIMUM:
        raise ValueError(f"{option.name}: {raw!r} is above the maximum {_maximum_text(option)}")


def _maximum_text(option: Option) -> str:
    """A duration's maximum in seconds and in its own unit: "24856d is above the maximum
    2147483647" read as days (found probing)."""
    if option.kind is not Kind.DURATION:
        return str(_MAXIMUM)
    if option.unit == "s":
        return f"{_MAXIMUM} seconds"
    return f"{_MAXIMUM} seconds ({_MAXIMUM // _UNITS[option.unit]} {_unit_name(option.unit)})"


def _unit_name(unit: str) -> str:
    return {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}[unit]


def _number(digits: str, base: int) -> int:
    digits = digits.lstrip("0") or "0"
    return int(digits, base) if len(digits) <= _DIGITS_MAX else base**_DIGITS_MAX


def parse_integer(text: str) -> int | None:
    """``text`` as Cyrus's strtol(p, &end, 0) reads a whole value: "010" is 8 and "0x10"
    16; None if it is not one ("08", "1_0", "\u0665", "0x")."""
    match = _INTEGER.fullmatch(text)
    if match is None:
        return None
    sign, hexadecimal, octal, decimal = match.groups()
    if hexadecimal is not None:
        number = _number(hexadecimal, 16)
    elif octal is not None:
        number = _number(octal, 8)
    else:
        number = _number(decimal, 10)
    return -number if sign == "-" else number


def parse_duration(text: str, unit: str) -> int | None:
    """Seconds, as Cyrus's config_parseduration reads ``text``: "1h30m", "-1d", "90"
    (in ``unit``), "1h30" (the last number in ``unit``); None if it is not a duration
    ("1 h", "1H", "+5", "\u0661\u0660")."""
    if text and text[-1] in "0123456789":
        text += unit
    match = _DURATION.fullmatch(text)
    if match is None:
        return None
    sign, parts = match.groups()
    seconds = sum(_number(n, 10) * _UNITS[u] for n, u in _DURATION_PART.findall(parts))
    return -seconds if sign else seconds


@dataclass
class Config:
    path: str = "<defaults>"
    settings: dict[str, Setting] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    # --- typed access, honouring service prefixes -------------------------------------

    def setting(self, name: str, service: str | None = None) -> Setting | None:
        if service:
            # Keys are read in lower case; a service may be named in any case in
            # cyrus.conf (POP3S), and Cyrus compares its prefix case-insensitively
            # (libconfig.c config_read_file, strncasecmp with config_ident).
            found = self.settings.get(f"{service.lower()}_{name}")
            if found is not None:
                return found
        return self.settings.get(name)

    def services(self) -> list[str]:
        """The services some key is set for (pop3s, for pop3s_allowapop), in file order.
        Which of them are pop3d's only cyrus.conf says: imap_sasl_mech_list is one too."""
        found = (
            key.partition("_")[0]
            for key in self.settings
            if key not in OPTIONS and key not in RENAMED  # tls_ca_file is no tls_ service's
        )
        return list(dict.fromkeys(found))

    def get(self, name: str, service: str | None = None) -> object:
        option = OPTIONS[name]
        found = self.setting(name, service)
        return option.default if found is None else found.value

    def switch(self, name: str, service: str | None = None) -> bool:
        assert OPTIONS[name].kind is Kind.SWITCH
        return bool(self.get(name, service))

    def integer(self, name: str, service: str | None = None) -> int:
        assert OPTIONS[name].kind in (Kind.INT, Kind.DURATION)
        value = self.get(name, service)
        assert isinstance(value, int)
        return value

    def string(self, name: str, service: str | None = None) -> str | None:
        assert OPTIONS[name].kind in (Kind.STRING, Kind.ENUM)
        value = self.get(name, service)
        return None if value is None else str(value)

    def where(self, name: str, service: str | None = None) -> str:
        """file:line of a setting, for messages about its value."""
        found = self.setting(name, service)
        return f"{found.path}:{found.line}" if found else f"{self.path} ({name} unset)"

    def problem_with(self, name: str, service: str | None, message: str) -> Problem:
        """An error about a setting's value, located at the line that set it (for an unset
        option: the file, line 0, naming the option)."""
        found = self.setting(name, service)
        if found is None:
            return Problem(f"{self.path} ({name} unset)", 0, message)
        return Problem(found.path, found.line, message)

    def error(self, name: str, service: str | None, message: str) -> ConfigError:
        """:meth:`problem_with` as the exception every start-up check raises."""
        return ConfigError([self.problem_with(name, service, message)])

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]


def _resolve_key(key: str) -> tuple[Option | None, bool]:
    """(option, known): the option a key sets, directly or through a service prefix."""
    option = OPTIONS.get(RENAMED.get(key, key))
    if option is not None:
        return option, True
    if key in OTHER_CYRUS_OPTIONS or _PARTITION.fullmatch(key):
        return None, True
    prefix, _, rest = key.partition("_")
    if prefix and rest:
        option = OPTIONS.get(RENAMED.get(rest, rest))
        if option is not None:
            return option, True
        if rest in OTHER_CYRUS_OPTIONS:
            return None, True
    return None, False


class _Parser:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.seen: dict[str, tuple[str, int]] = {}  # every key, known or not: where set
        self.read: dict[str, str] = {}  # every file read (its real path): as named first

    def problem(self, path: str, line: int, message: str, severity: str = "error") -> None:
        self.config.problems.append(Problem(path, line, message, severity))

    def parse_file(self, path: Path, depth: int = 0, origin: tuple[str, int] | None = None) -> None:
        try:
            real = os.path.realpath(path)
        except ValueError:  # a NUL in the name: read_text says why
            real = str(path)
        if (first := self.read.get(real)) is not None:
            # Cyrus's config_read_file: "included twice"; a file including itself gave one
            # "set again" error for each of its keys (found re-probing)
            where, line = origin or (str(path), 0)
            self.problem(where, line, f"{path} is read twice (first as {first}); Cyrus refuses it")
            return
        self.read[real] = str(path)
        try:
            text = read_text(path)
        except Unreadable as exc:
            where, line = origin or (str(path), 0)
            self.problem(where, line, f"cannot read {path}: {exc}")
            return
        self.parse_text(text, str(path), depth)

    def parse_text(self, text: str, path: str, depth: int = 0) -> None:
        for number, raw, last in _joined_lines(text):
            line = raw.strip(_BLANKS)
            if last is None and line and not line.startswith("#"):
                self.problem(
                    path,
                    number,
                    "the last line ends with \\, which continues it past the end of the "
                    "file (Cyrus drops the line)",
                )
                continue
            if line.startswith("#") and last is not None and last > number:
                self.problem(
                    path,
                    number,
                    f"a comment ending with \\ goes on to line {last}, which is part of it "
                    "(as Cyrus reads it)",
                    "warning",
                )
            if not line or line.startswith("#"):
                continue
            if not_utf8(line):
                self.problem(path, number, "not UTF-8")
                continue
            key, sep, value = line.partition(":")
            # Lower-cased only once it is ASCII: the Kelvin sign lower-cases to "k", and
            # "tls_\u212aey_file" was read as tls_key_file (found re-probing). Only ASCII
            # blanks end a value, as Cyrus's Uisspace: "20\xa0" is no number.
            ascii_name = key.isascii()
            key = key.lower()
            value = value.strip(_BLANKS)
            # An option's name as config_read_file reads one: ASCII letters, digits, "-"
            # and "_", the ":" right after it ("invalid option name" else)
            if not sep or not ascii_name or not re.fullmatch(r"@?[a-z0-9_-]+", key):
                self.problem(
                    path,
                    number,
                    "expected 'key: value' (a name of letters, digits, - and _, then ':'), "
                    f"got {raw.strip()!r}",
                )
                continue
            # Cyrus's config_read_file refuses each of these ("empty option value",
            # "invalid directive", "option was specified twice"), and a shared imapd.conf
            # that pop3d read kept every other Cyrus daemon from starting.
            if not value:
                self.problem(path, number, f"{key}: an empty value (Cyrus refuses one)")
                continue
            if key.startswith("@") and key != "@include":
                self.problem(path, number, f"{key}: not a directive (Cyrus has @include only)")
                continue
            if key != "@include":
                if (earlier := self.seen.get(key)) is not None:
                    self.problem(
                        path,
                        number,
                        f"{key} set again (first at {earlier[0]}:{earlier[1]}); Cyrus refuses "
                        "an option set twice",
                    )
                    continue
                self.seen[key] = (path, number)
            if key == "@include":
                if depth >= _MAX_INCLUDE_DEPTH:
                    self.problem(path, number, "@include nested too deeply")
                    continue
                target = Path(value)
                if not target.is_absolute():
                    target = Path(path).parent / target
                self.parse_file(target, depth + 1, (path, number))
                continue
            self.assign(key, value, path, number)

    def assign(self, key: str, value: str, path: str, number: int) -> None:
        option, known = _resolve_key(key)
        if not known:
            self.problem(path, number, f"unknown option {key!r} (ignored)", "warning")
            return
        if option is None:
            return
        try:
            parsed = parse_value(option, value)
        except ValueError as exc:
            self.problem(path, number, str(exc))
            return
        self.config.settings[key] = Setting(parsed, path, number)
        if option.kind is Kind.SWITCH and value not in _TRUE | _FALSE:
            self.problem(
                path,
                number,
                f"{key}: {value!r} is read as {'yes' if parsed else 'no'} (Cyrus reads a "
                "switch by its first letters)",
                "warning",
            )
        octal = re.fullmatch(r"[+-]?0([0-7]+)", value)
        if octal is not None and option.kind is Kind.INT and len(octal.group(1).lstrip("0")) > 1:
            # pop3d read "010" as 10 before it read numbers as Cyrus does ("07" is 7 either way)
            self.problem(
                path,
                number,
                f"{key}: {value} is octal, {parsed} (a leading 0, as Cyrus reads it): write "
                f"{parsed} if that is meant",
                "warning",
            )
        if key != option.name and option.name in SERVER_WIDE:
            self.problem(
                path,
                number,
                f"{key}: {option.name} is read once for the whole server, not per service "
                "(ignored)",
                "warning",
            )
        self.check_semantics(option, key, parsed, path, number)

    def check_semantics(self, option: Option, key: str, value: object, path: str, n: int) -> None:
        # Mechanism names are checked by pop3d.sasl.registry.config_problems: the layer
        # that knows them (configuration sits below SASL and must not import it).
        if option.name == "chatty" and value:
            self.problem(
                path,
                n,
                f"{key}: chatty is not supported (ignored): Cyrus's logs every line, "
                "passwords and AUTH exchanges included, and pop3d does not log secrets",
                "warning",
            )
        if not key.endswith(option.name):  # one of Cyrus's older names (RENAMED)
            older = key if key in RENAMED else key.partition("_")[2]
            newer = key.removesuffix(older) + option.name
            self.problem(
                path,
                n,
                f"{key}: Cyrus's older name (deprecated since 2.5.0), read as {newer}: rename it",
                "warning",
            )
        no_effect = NO_EFFECT.get(option.name)
        if no_effect is not None and (no_effect[0] is None or value != no_effect[0]):
            shown = ("yes" if value else "no") if isinstance(value, bool) else value
            self.problem(
                path,
                n,
                f"{key}: {shown} has no effect here (ignored): {no_effect[1]}",
                "warning",
            )
        if option.name in _WORDS and isinstance(value, str) and (trouble := _word_problem(value)):
            self.problem(path, n, f"{key}: {trouble}")
        if option.path and isinstance(value, str) and (trouble := path_problem(option, value)):
            self.problem(path, n, f"{key}: {trouble}")
        if option.name == "debug_command" and isinstance(value, str):
            trouble = debug_command_problem(value)
            if trouble:
                self.problem(path, n, f"{key}: {trouble}")
        if option.name == "maildir_path" and isinstance(value, str):
            trouble = maildir_template_problem(value)
            if trouble:
                self.problem(path, n, f"{key}: {trouble}")
        if option.name == "poptimeout" and isinstance(value, int) and value < 600:
            self.problem(
                path,
                n,
                f"{key}: {value}s is below the 10 minutes RFC 1939 asks for",
                "warning",
            )


# Values that go into protocol lines: servername into the greeting, the APOP challenge
# <...@servername> and Kerberos's pop/<servername>; syslog_prefix (servername without it)
# into each session id, SESSIONID=<...> in the login's +OK and the syslog tag. One word
# of printable ASCII, and short enough that each line stays within RFC 2449's 512 octets:
# found probing, CR, ESC, NUL and ">" went into those lines, and a 3 MB syslog_prefix
# made a 3 MB answer. 128 is Cyrus's own limit on a session id's prefix (lib/sessionid.c
# prints it with %.128s); the greeting, with servername twice, stays within 330 octets.
_WORDS = frozenset({"servername", "syslog_prefix"})
_WORD_MAX = 128
_WORD = re.compile(r"[!-;=?-~]+")  # printable ASCII but space, < and >


def _word_problem(value: str) -> str | None:
    """Why ``value`` cannot be servername or syslog_prefix, or None. The length first:
    a value of megabytes is not repeated in the message."""
    if len(value) > _WORD_MAX:
        return f"{len(value)} characters, more than {_WORD_MAX} (it goes into protocol lines)"
    if not _WORD.fullmatch(value):
        return (
            f"{value!r} is not one word of printable ASCII without < or > (it goes into "
            "protocol lines)"
        )
    return None


def path_problem(option: Option, value: str) -> str | None:
    """Why a file or folder option's value cannot be used, or None. A relative path is
    relative to whatever folder a process starts in, which differs between them: found
    probing, "partition-default: spool" checked clean, and pop3d-admin deliver, run by
    Postfix's pipe in its queue folder, stored mail there, where no login looked."""
    name = value
    if option.name in ("tls_server_cert", "tls_server_key") and value == "disabled":
        return None  # Cyrus's word for "no TLS here" (tls.c)
    if option.name == "sasl_keytab":
        kind, colon, rest = value.partition(":")
        if colon and kind.upper() in ("FILE", "WRFILE"):
            name = rest
        elif colon and not kind.startswith("/"):
            return None  # not a file keytab: the keytab check refuses it, saying so
    if not name.startswith("/"):
        return (
            f"{value!r} is not an absolute path (a relative one names another file in each "
            "process, relative to the folder it started in)"
        )
    return None


# debug_command is a printf format: Cyrus runs snprintf(buf, 1024, debug_command,
# argv[0], getpid(), service) (master/service.c). Each conversion takes the next of those
# three, a string, a number and a string; one that does not fit its argument, or a
# fourth, is undefined in C, so refused here.
_CONVERSION = re.compile(r"%(?:%|([-+ #0]*[0-9]*(?:\.[0-9]*)?)(hh|h|ll|l|j|z|t|L|q|\*)?(.?))")
_DEBUG_ARGUMENTS = (("program name", "s"), ("process id", "diouxX"), ("service name", "s"))
DEBUG_COMMAND_MAX = 1023  # octets: what Cyrus's 1,024-octet buffer holds


def debug_command_problem(template: str) -> str | None:
    """Why Cyrus's snprintf could not fill ``template`` in, or None."""
    taken = 0
    for match in _CONVERSION.finditer(template):
        if match.group(0) == "%%":
            continue
        _flags, modifier, conversion = match.groups()
        if taken == len(_DEBUG_ARGUMENTS):
            return (
                f"{match.group(0)!r} is a fourth conversion: Cyrus fills in three (the "
                "program name %s, the process id %d, the service name %s; %% is a %)"
            )
        name, conversions = _DEBUG_ARGUMENTS[taken]
        if not modifier and not conversion:
            return "a lone % at the end (%% is a %)"
        if modifier or conversion not in conversions:
            shown = ", ".join(f"%{c}" for c in conversions)
            return f"{match.group(0)!r} takes the {name}, which needs {shown} (%% is a %)"
        taken += 1
    return None


def fill_debug_command(template: str, program: str, pid: int, service: str) -> str:
    """``template`` filled in as snprintf does (checked by :func:`debug_command_problem`):
    each conversion, flags, width and precision included, takes the next argument; %%
    is a %. Python's % operator formats a C conversion as C does."""
    values = iter((program, pid, service))

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "%%":
            return "%"
        return match.group(0) % next(values)

    return _CONVERSION.sub(one, template)


def maildir_template_problem(template: str) -> str | None:
    """Why ``maildir_path`` cannot work, or None. Found probing, each of these checked
    clean: an empty value (every maildrop the server's working folder), no %u or %n (all
    users one maildrop), an unknown escape or a lone % at the end (every login failing
    with [SYS/TEMP]), a relative path (a maildrop wherever the process started)."""
    escapes = re.findall(r"%(.?)", template)
    unknown = sorted({e for e in escapes if e not in "undp%" or not e})
    if not template:
        return "empty: it must name each user's Maildir, e.g. %p/%u/Maildir"
    if unknown:
        shown = ", ".join(f"%{e}" if e else "a lone % at the end" for e in unknown)
        return f"{shown} is not one of %u %n %d %p %%"
    if "u" not in escapes and "n" not in escapes:
        return "names no user (%u or %n): every user would share one maildrop"
    if not template.startswith(("/", "%p")):
        return "must be an absolute path (or start with %p)"
    return None


def _take_older_names(config: Config) -> None:
    """An older name's value (RENAMED) is the newer name's where that is not set, as
    Cyrus's libconfig has it (config_option_deprecate): a newer name set for the service
    or for all of them wins, and the older one is then ignored, with a warning."""
    given = dict(config.settings)
    for key, setting in given.items():
        older = key if key in RENAMED else key.partition("_")[2]
        if older not in RENAMED:
            continue
        newer = RENAMED[older]
        target = key.removesuffix(older) + newer
        if target in given or newer in given:
            winner = given.get(target) or given[newer]
            message = f"{key} ignored: {target if target in given else newer} is set"
            where = f" ({winner.path}:{winner.line})"
            config.problems.append(Problem(setting.path, setting.line, message + where, "warning"))
            continue
        config.settings[target] = setting


def load(path: str | Path) -> Config:
    """Parse ``path``. Raises :class:`ConfigError` listing every error; warnings are kept in
    ``config.problems`` for the caller to print."""
    config = Config(path=str(path))
    parser = _Parser(config)
    parser.parse_file(Path(path))
    _take_older_names(config)
    if config.errors:
        raise ConfigError(config.errors + config.warnings)
    return config


def from_text(text: str, path: str = "<text>") -> Config:
    config = Config(path=path)
    _Parser(config).parse_text(text, path)
    _take_older_names(config)
    if config.errors:
        raise ConfigError(config.errors + config.warnings)
    return config
