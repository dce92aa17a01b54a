"""``pop3d-admin``: users, delivery and configuration checks.

    pop3d-admin [-C imapd.conf] passwd [--no-legacy] USER  set a password (stdin if no tty)
    pop3d-admin [-C imapd.conf] passwd -d USER           delete a user
    pop3d-admin [-C imapd.conf] users                    list users and their schemes
    pop3d-admin [-C imapd.conf] deliver USER < message   atomic Maildir delivery (an MDA)
    pop3d-admin [-C imapd.conf] import --dovecot MAILDIR [--uidl-format F] USER
                                                         copy a Dovecot Maildir, UIDLs kept
    pop3d-admin [-C imapd.conf] import --mbox FILE [--uidl-format F] [--xuidl] USER
                                                         copy an mbox, X-UIDL or X-UID kept
    pop3d-admin [-C imapd.conf] import (--dovecot|--mbox) TEMPLATE --all
                                                         every user (%u in TEMPLATE)
    pop3d-admin [-C imapd.conf] import --imap HOST[:PORT] [--imap-tls starttls|imaps|none]
                [--admin NAME] --password-file FILE [--uidl-format F | --cyrus-config FILE]
                (USER | --all)                          copy INBOXes from Cyrus, UIDLs kept
    pop3d-admin [-C imapd.conf] check-config [-M cyrus.conf] [--strict]
    pop3d-admin man [PAGE]                               the manual pages (list, or show one)

Exit codes follow sysexits; ``deliver`` answers 75 (EX_TEMPFAIL) on any storage error, so
an MTA keeps the message and retries, and 67 (EX_NOUSER) for an unknown user.
"""

from __future__ import annotations

import argparse
import collections
import getpass
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pop3d.auth import credentials, schemes
from pop3d.auth.credentials import SCHEME_PLAIN_B64, CredentialFileError
from pop3d.auth.from_config import (
    argon2_parameters,
    credentials_path,
    identity_rules,
    needed_schemes,
    users_beyond_credential_file,
)
from pop3d.auth.identity import canonical_user, split_folder
from pop3d.cli.common import (
    DEFAULT_CYRUS_CONF,
    DEFAULT_IMAPD_CONF,
    EX_CANTCREAT,
    EX_CONFIG,
    EX_DATAERR,
    EX_NOINPUT,
    EX_NOPERM,
    EX_NOUSER,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    EX_USAGE,
    Exit,
    fail,
    file_named,
    load_config,
    run,
    syslog_problem,
)
from pop3d.cli.master import (
    check_services,
    command_problem,
    listen_problems,
    metrics_problem,
    no_service_problem,
    worker_start_problem,
)
from pop3d.config import cyrus, imapd
from pop3d.config.imapd import Config, ConfigError, Problem
from pop3d.sasl import registry
from pop3d.security.secret import Secret
from pop3d.server import privileges
from pop3d.storage import imap_import
from pop3d.storage.base import StorageError, UnacceptableMessage
from pop3d.storage.dovecot_import import DEFAULT_UIDL_FORMAT, check_format, import_dovecot
from pop3d.storage.imap_import import (
    CertificatesRefused,
    CertificatesUnreadable,
    LoginRefused,
    NoSuchMailbox,
    ServerUnreachable,
)
from pop3d.storage.importing import (
    ImportFailed,
    ImportReport,
    SourcePath,
    SourceRefused,
    SourceUnreadable,
    source_exists,
)
from pop3d.storage.locks import check_table
from pop3d.storage.maildir import store_from_config
from pop3d.storage.mbox_import import import_mbox
from pop3d.transport import tls

PROGRAM = "pop3d-admin"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise Exit(EX_USAGE, f"{PROGRAM}: {message}\n{self.format_usage().strip()}")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROGRAM, description="Manage pop3d users, delivery and config.")
    parser.add_argument(
        "-C", dest="config", default=DEFAULT_IMAPD_CONF, help="imapd.conf (default %(default)s)"
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    passwd = commands.add_parser("passwd", help="set or delete a user's password")
    passwd.add_argument("-d", "--delete", action="store_true", help="delete the user")
    passwd.add_argument(
        "--no-legacy",
        action="store_true",
        help="do not store the plaintext equivalent APOP, CRAM-MD5 and DIGEST-MD5 need, "
        "even where the site enables them",
    )
    passwd.add_argument("user")
    commands.add_parser("users", help="list users")
    deliver = commands.add_parser("deliver", help="deliver a message from stdin")
    deliver.add_argument("user")
    importing = commands.add_parser(
        "import",
        help="import a Dovecot Maildir, an mbox or a Cyrus INBOX over IMAP, keeping POP3 UIDLs",
    )
    sources = importing.add_mutually_exclusive_group(required=True)
    sources.add_argument("--dovecot", metavar="MAILDIR", help="the user's Dovecot Maildir")
    sources.add_argument("--mbox", metavar="FILE", help="the user's mbox (/var/mail/USER)")
    sources.add_argument(
        "--imap",
        metavar="HOST[:PORT]",
        help="a running Cyrus (or other IMAP server): the user's INBOX, read only",
    )
    importing.add_argument(
        "--uidl-format",
        default=None,
        help="--dovecot: the old site's pop3_uidl_format, for messages without a P field "
        "(--mbox: with X-UID headers and no X-UIDL) "
        f"(default {DEFAULT_UIDL_FORMAT.replace('%', '%%')}); "
        "--imap: the old site's uidl_format, one of "
        f"{', '.join(imap_import.UIDL_FORMATS)} (default {imap_import.DEFAULT_UIDL_FORMAT})",
    )
    xuidl = importing.add_mutually_exclusive_group()
    xuidl.add_argument(
        "--xuidl",
        action="store_true",
        help="--mbox: the old site served X-UIDL headers as UIDLs (Dovecot's "
        "pop3_reuse_xuidl = yes): keep each valid one no earlier message took",
    )
    xuidl.add_argument(
        "--no-xuidl",
        action="store_true",
        help="--mbox: ignore X-UIDL headers (the default, as Dovecot's pop3_reuse_xuidl)",
    )
    importing.add_argument(
        "--cyrus-config",
        metavar="FILE",
        help="--imap: read uidl_format from the old site's imapd.conf",
    )
    importing.add_argument(
        "--imap-tls",
        choices=imap_import.TLS_MODES,
        default="none",
        help="--imap: STARTTLS, implicit TLS (port 993 by default) or none (default; "
        "only on loopback or a trusted network)",
    )
    importing.add_argument(
        "--imap-ca",
        metavar="FILE",
        help="--imap with --imap-tls starttls or imaps: CA certificates, PEM (default: the "
        "system's)",
    )
    importing.add_argument(
        "--admin",
        metavar="NAME",
        help="--imap: log in as this Cyrus administrator acting for each user "
        "(AUTHENTICATE PLAIN with the user as authorization identity)",
    )
    importing.add_argument(
        "--password-file",
        metavar="FILE",
        help="--imap: the administrator's password (with --admin), else the user's: the "
        "first line of FILE",
    )
    importing.add_argument(
        "--all",
        action="store_true",
        help="--imap --admin: every user with an INBOX there (LIST user.%%); --dovecot, "
        "--mbox: every user of the credential file, MAILDIR or FILE a template with %%u "
        "(user), %%n (local part), %%d (domain); a user without one is passed over",
    )
    importing.add_argument("user", nargs="?", help="the user (not with --all)")
    check = commands.add_parser("check-config", help="validate imapd.conf and cyrus.conf")
    check.add_argument(
        "-M",
        dest="cyrus_conf",
        default=None,
        help=f"cyrus.conf (default {DEFAULT_CYRUS_CONF} if it exists)",
    )
    check.add_argument(
        "--strict",
        action="store_true",
        help="exit 78 on a warning too (by default only an error the master or a login "
        "would refuse is)",
    )
    manual = commands.add_parser("man", help="list the manual pages, or show one")
    manual.add_argument("page", nargs="?", help="pop3d, pop3d-master, pop3d-admin, pop3d.conf")
    return parser


def _config(path: str) -> Config:
    return load_config(PROGRAM, path)


def _user(config: Config, raw: str) -> str:
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:  # argv bytes that are not UTF-8 arrive as surrogate escapes
        shown = os.fsencode(raw).decode("ascii", "backslashreplace")
        fail(PROGRAM, EX_DATAERR, f"user name '{shown}' is not valid UTF-8")
    user = canonical_user(raw, identity_rules(config))
    if user is None:
        fail(PROGRAM, EX_DATAERR, f"{raw!r} is not a valid user name")
    return user


def _account(config: Config, raw: str) -> str:
    """:func:`_user` for a name that gets a password or a Maildir of its own: with
    popsubfolders, one that names a folder ("user+folder") is refused, exit 65. A login as
    it opens the user's folder, never this name's own: a password set or mail imported
    under it could not be reached (found probing)."""
    user = _user(config, raw)
    rules = identity_rules(config)
    if rules.subfolders and split_folder(raw, rules) != (raw, None):
        fail(PROGRAM, EX_DATAERR, f"{raw!r} names a folder (popsubfolders), not a user")
    return user


# The longest password passwd takes: more than any login line of the default pop_line_max
# (8,192 octets, "PASS " and CRLF included) could carry is of no use to anyone.
LONGEST_PASSWORD = 8185


def _read_password() -> Secret:
    """A password typed twice on a terminal, else the first line of standard input. Only
    UTF-8: the SCRAM keys are derived from it as text (RFC 5802's SASLprep), and clients
    send what their users type in UTF-8; other bytes are refused rather than stored as a
    password no SCRAM login could match."""
    if sys.stdin is None:
        fail(PROGRAM, EX_NOINPUT, "no password: standard input is closed")
    try:
        if sys.stdin.isatty():
            first = getpass.getpass("New password: ")
            if first != getpass.getpass("Again: "):
                fail(PROGRAM, EX_DATAERR, "the passwords differ")
            data = first.encode("utf-8")
        else:
            # Read no further than a password can be: a line with no end (</dev/zero)
            # grew until MemoryError, a traceback, exit 70 (found probing).
            data = sys.stdin.buffer.readline(LONGEST_PASSWORD + 3).rstrip(b"\r\n")
            data.decode("utf-8")
    except UnicodeError:
        fail(PROGRAM, EX_DATAERR, "the password is not valid UTF-8")
    if not data:
        fail(PROGRAM, EX_DATAERR, "empty password")
    if len(data) > LONGEST_PASSWORD:
        fail(PROGRAM, EX_DATAERR, f"the password is longer than {LONGEST_PASSWORD} octets")
    return Secret(data)


def _credentials_owner(config: Config) -> tuple[int, int] | None:
    """Who a credential file made by root should belong to: ``cyrus_user``, whom the server
    reads it as (mode 0600). None: whoever runs this."""
    if os.geteuid() != 0 or config.string("cyrus_user") is None:
        return None
    account = privileges.target(config)
    return (account.uid, account.gid) if account is not None else None


def _update_credentials(
    path: Path,
    user: str,
    change: Callable[[credentials.UserRecord | None], credentials.UserRecord | None],
    owner: tuple[int, int] | None,
) -> None:
    try:
        credentials.update(path, user, change, owner)
    except OSError as exc:
        code = EX_NOPERM if isinstance(exc, PermissionError) else EX_CANTCREAT
        fail(PROGRAM, code, f"cannot update {path}: {exc.strerror or exc}")


def cmd_passwd(config: Config, args: argparse.Namespace) -> int:
    user = _user(config, args.user) if args.delete else _account(config, args.user)
    path = credentials_path(config)
    owner = _credentials_owner(config)
    if args.delete:
        found = []

        def remove(record: credentials.UserRecord | None) -> None:
            found.append(record is not None)

        _update_credentials(path, user, remove, owner)
        if not found[0]:
            fail(PROGRAM, EX_NOUSER, f"no such user {user!r}")
        return 0
    password = _read_password()
    wanted = needed_schemes(config, pop3d_services(config))
    if args.no_legacy:
        wanted.discard(SCHEME_PLAIN_B64)
    values, warnings = schemes.derive(
        password, wanted, argon2_parameters(config), config.integer("scram_iterations")
    )
    for warning in warnings:
        print(f"{PROGRAM}: warning: {warning}", file=sys.stderr)
    _update_credentials(path, user, lambda _old: credentials.UserRecord(user, values), owner)
    return 0


# The services of Cyrus's own daemons in its stock cyrus.conf: a key prefixed with one of
# these (imap_sasl_mech_list) in a shared imapd.conf is that daemon's, not pop3d's.
_OTHER_DAEMONS = frozenset(
    "imap imaps lmtp lmtpunix sieve nntp nntps http https idled notify squatter".split()
)


def pop3d_services(config: Config) -> list[str]:
    """The services whose prefixed keys passwd and deliver follow: every one some key is
    set for, but Cyrus's own daemons'. Found probing: a shared imapd.conf's
    imap_sasl_mech_list: CRAM-MD5 made passwd store a plaintext equivalent, and
    imap_sasl_pwcheck_method: saslauthd made deliver take mail for any name. (Which
    services are pop3d's only cyrus.conf knows, and passwd and deliver are not given one.)"""
    return [name for name in config.services() if name.lower() not in _OTHER_DAEMONS]


def cmd_users(config: Config, _args: argparse.Namespace) -> int:
    store = credentials.CredentialFile(credentials_path(config))
    for record in sorted(store.users(), key=lambda r: r.name):
        print(f"{record.name}\t{','.join(sorted(record.secrets))}")
    return 0


def cmd_deliver(config: Config, args: argparse.Namespace) -> int:
    user = _user(config, args.user)
    rules = identity_rules(config)
    if rules.subfolders and split_folder(args.user, rules) != (args.user, None):
        # A login as this name opens another user's folder or INBOX, so a Maildir made
        # for it would be one no login could open (found probing, with users beyond the
        # credential file: "demo+folder" was stored in spool/demo+folder, exit 0).
        fail(PROGRAM, EX_NOUSER, f"no such user {user!r}: with popsubfolders it names a folder")
    if sys.stdin is None:  # started with descriptor 0 closed: there is no message
        fail(PROGRAM, EX_NOINPUT, f"no message to deliver to {user}: standard input is closed")
    store = credentials.CredentialFile(credentials_path(config))
    if store.lookup(user) is None and not users_beyond_credential_file(
        config, pop3d_services(config)
    ):
        fail(PROGRAM, EX_NOUSER, f"no such user {user!r}")
    try:
        store_from_config(config).deliver(user, sys.stdin.buffer)
    except UnacceptableMessage as exc:  # permanent: the MTA bounces it (EX_DATAERR)
        fail(PROGRAM, EX_DATAERR, f"message to {user} refused, not stored: {exc}")
    except (OSError, StorageError) as exc:
        fail(PROGRAM, EX_TEMPFAIL, f"delivery to {user} failed, message not stored: {exc}")
    return 0


def cmd_import(config: Config, args: argparse.Namespace) -> int:
    """Exit 0 when every message is in (some may have been there already), 65 (EX_DATAERR)
    when some could not be read (reported and skipped) or the source was refused (a link, a
    FIFO, too large, not an mbox, a uidlist that does not parse: storage/importing.py), 66
    (EX_NOINPUT) when it is missing or unreadable, 78/75 when the import stopped (with
    --all: for some user; the others went on); --imap: 69 (EX_UNAVAILABLE) no connection,
    77 (EX_NOPERM) login refused, 67 (EX_NOUSER) no such mailbox, 66 an --imap-ca that
    cannot be read, 65 one without a certificate."""
    if (args.xuidl or args.no_xuidl) and args.mbox is None:
        fail(PROGRAM, EX_USAGE, "--xuidl and --no-xuidl are for --mbox")
    if args.imap is not None:
        return _import_imap(config, args)
    for name in ("cyrus_config", "admin", "password_file", "imap_ca"):
        if getattr(args, name) is not None:
            fail(PROGRAM, EX_USAGE, f"--{name.replace('_', '-')} is for --imap")
    if args.imap_tls != "none":
        fail(PROGRAM, EX_USAGE, "--imap-tls is for --imap")
    template = args.mbox if args.mbox is not None else args.dovecot
    if args.all == (args.user is not None):
        fail(PROGRAM, EX_USAGE, "import: name one USER, or --all")
    if not args.all:
        source = SourcePath.given(Path(template))
        return _import_one(config, args, _account(config, args.user), source)
    if "%u" not in template and "%n" not in template:
        fail(PROGRAM, EX_USAGE, f"import --all: {template!r} names no user (%u or %n)")
    names = sorted(r.name for r in credentials.CredentialFile(credentials_path(config)).users())
    # The names a single import would refuse ("a/b", ".", "/x"): each part of a template's
    # expansion must be one folder of that user's (found probing: "a/b" read a's home).
    refused = [name for name in names if canonical_user(name, identity_rules(config)) != name]
    for name in refused:
        print(f"{name}: not a valid user name, not imported", file=sys.stderr)
    names = [name for name in names if name not in refused]
    try:
        sources = {user: SourcePath.from_template(template, user) for user in names}
    except StorageError as exc:
        fail(PROGRAM, EX_USAGE, f"import --all: {exc}")
    worst = EX_DATAERR if refused else 0
    for user, source in sources.items():
        if not source_exists(source):
            print(f"{user}: nothing at {source}")
            continue
        try:
            code = _import_one(config, args, user, source)
        except Exit as exc:
            print(exc.message, file=sys.stderr)
            code = exc.code
        worst = max(worst, code, key=_SEVERITY.__getitem__)
    return worst


# 0 done, 65 some messages skipped, 75 (or any other) an import stopped: the worst is told
_SEVERITY: dict[int, int] = collections.defaultdict(lambda: 2, {0: 0, EX_DATAERR: 1})


def _import_one(config: Config, args: argparse.Namespace, user: str, source: SourcePath) -> int:
    uidl_format = args.uidl_format or DEFAULT_UIDL_FORMAT
    try:  # a command-line error, before anything is read: not an import that stopped (75)
        check_format(uidl_format)
    except ValueError as exc:
        fail(PROGRAM, EX_USAGE, f"--uidl-format: {exc}")
    try:
        store = store_from_config(config)
        if args.mbox is not None:
            result = import_mbox(
                source,
                store,
                user,
                _report,
                uidl_format=uidl_format,
                reuse_xuidl=args.xuidl,
            )
        else:
            result = import_dovecot(source, store, user, uidl_format, _report)
    except SourceRefused as exc:
        fail(PROGRAM, EX_DATAERR, f"import refused: {exc}")
    except SourceUnreadable as exc:
        fail(PROGRAM, EX_NOINPUT, f"import stopped: {exc}")
    except ImportFailed as exc:
        fail(PROGRAM, EX_TEMPFAIL, f"import stopped: {exc}")
    _summary(user, result)
    return EX_DATAERR if result.skipped else 0


def _report(line: str) -> None:
    print(f"{PROGRAM}: {line}", file=sys.stderr)


def _summary(user: str, result: ImportReport) -> None:
    unlisted = f" ({result.unlisted} not in dovecot-uidlist)" if result.unlisted else ""
    print(
        f"{user}: {result.imported} imported{unlisted}, {result.present} already there, "
        f"{len(result.skipped)} skipped"
    )


def _import_imap(config: Config, args: argparse.Namespace) -> int:
    if args.all == (args.user is not None):
        fail(PROGRAM, EX_USAGE, "import --imap: give one USER or --all")
    if args.all and args.admin is None:
        fail(PROGRAM, EX_USAGE, "import --imap --all needs --admin (to list the users)")
    if args.password_file is None:
        fail(PROGRAM, EX_USAGE, "import --imap needs --password-file (never a password in argv)")
    if args.uidl_format is not None and args.cyrus_config is not None:
        fail(PROGRAM, EX_USAGE, "give --uidl-format or --cyrus-config, not both")
    if args.imap_ca is not None and args.imap_tls == "none":
        # Nothing would check a certificate with it: it was passed over without a word
        fail(PROGRAM, EX_USAGE, "--imap-ca needs --imap-tls starttls or imaps")
    uidl_format = args.uidl_format or imap_import.DEFAULT_UIDL_FORMAT
    if uidl_format not in imap_import.UIDL_FORMATS:
        choices = ", ".join(imap_import.UIDL_FORMATS)
        fail(PROGRAM, EX_USAGE, f"--uidl-format {uidl_format!r}: expected one of {choices}")
    try:
        host, port = imap_import.parse_address(args.imap, args.imap_tls)
    except ValueError as exc:
        fail(PROGRAM, EX_USAGE, f"--imap {exc}")
    if args.imap_ca is not None:
        try:  # here, once, not at each user's connection
            imap_import.tls_context(args.imap_ca)
        except ImportFailed as exc:
            fail(PROGRAM, _imap_exit(exc), f"--imap-ca {exc}")
    try:
        if args.cyrus_config is not None:
            uidl_format = imap_import.uidl_format_from_config(Path(args.cyrus_config))
    except ImportFailed as exc:
        fail(PROGRAM, EX_CONFIG, str(exc))
    server = imap_import.Server(host, port, args.imap_tls, args.imap_ca)
    credentials = imap_import.Login(_password_file(args.password_file), args.admin)
    try:
        store = store_from_config(config)
        users = imap_import.list_users(server, credentials) if args.all else [args.user]
    except ImportFailed as exc:
        fail(PROGRAM, _imap_exit(exc), f"import stopped: {exc}")
    worst = 0
    for name in users:
        user = _user(config, name)
        try:
            result = imap_import.import_imap(
                server, credentials, name, store, user, uidl_format=uidl_format, report=_report
            )
        except (LoginRefused, ServerUnreachable) as exc:
            fail(PROGRAM, _imap_exit(exc), f"import stopped: {exc}")
        except ImportFailed as exc:
            _report(f"{user}: not imported: {exc}")
            worst = max(worst, _imap_exit(exc))
            continue
        _summary(user, result)
        if result.skipped:
            worst = max(worst, EX_DATAERR)
    return worst


def _imap_exit(exc: ImportFailed) -> int:
    if isinstance(exc, CertificatesUnreadable):
        return EX_NOINPUT  # as an unreadable --password-file
    if isinstance(exc, CertificatesRefused):
        return EX_DATAERR  # as a --password-file with nothing in it
    if isinstance(exc, ServerUnreachable):
        return EX_UNAVAILABLE
    if isinstance(exc, LoginRefused):
        return EX_NOPERM
    if isinstance(exc, NoSuchMailbox):
        return EX_NOUSER
    return EX_TEMPFAIL


def _password_file(path: str) -> Secret:
    """The first line of ``path``, its line end dropped. Never from argv, never echoed."""
    try:
        with open(path, "rb") as handle:
            line = handle.readline(4096)
    except OSError as exc:
        fail(PROGRAM, EX_NOINPUT, f"cannot read the password file {path}: {exc.strerror}")
    password = line.rstrip(b"\r\n")
    if not password:
        fail(PROGRAM, EX_DATAERR, f"the password file {path} has an empty first line")
    return Secret(password)


@dataclass(frozen=True, slots=True)
class _Found:
    """A line check-config prints: an error (what the master, a worker or every login
    would refuse) or a warning (what they run with, saying so)."""

    text: str
    warning: bool = False


def _from_problems(problems: Iterable[Problem]) -> list[_Found]:
    return [_Found(str(p), p.severity == "warning") for p in problems]


def _errors(lines: Iterable[str]) -> list[_Found]:
    return [_Found(line) for line in lines]


def cmd_check_config(config_path: str, args: argparse.Namespace) -> int:
    """Every error and warning, one a line; exit 78 if there was an error (or, with
    --strict, a warning), else "configuration OK" and 0. A warning is no refusal: the
    master and pop3d start with it (DESIGN.md: a Cyrus site's files must start). Found
    probing: any warning was exit 78, so contrib's unit, whose ExecStartPre runs this,
    would not start on the stock Debian cyrus.conf (imapd is not pop3d) or 'poptimeout: 5',
    which the master runs."""
    found: list[_Found] = []
    config: Config | None = None
    try:
        config = imapd.load(config_path)
        found += _from_problems(config.problems + registry.config_problems(config))
    except ConfigError as exc:
        found += _from_problems(exc.problems)
    references: list[_Found] = []
    if config is not None:
        found += _worker_start(config)
        references = _as_the_server(config, lambda: _check_references(config))
        found += references
    cyrus_path = args.cyrus_conf
    if cyrus_path is None and Path(DEFAULT_CYRUS_CONF).exists():
        cyrus_path = DEFAULT_CYRUS_CONF
    master_config: cyrus.MasterConfig | None = None
    if cyrus_path is not None:
        try:
            master_config = cyrus.load(cyrus_path)
        except ConfigError as exc:
            found += _from_problems(exc.problems)
        else:
            found += _from_problems(master_config.problems)
            problems = [no_service_problem(master_config)]
            problems += [command_problem(service) for service in master_config.services]
            found += _errors(problem for problem in problems if problem is not None)
            found += _errors(listen_problems(master_config))
            if config is not None and not any(not f.warning for f in references):
                # What the master checks before its workers start: every service's
                # context built as they will build it, each with its own -C file (found
                # probing: a service's broken -C, a pop3d -s without a certificate were
                # "configuration OK", then the master exited 78). Not after a file the
                # server's account cannot read: that is said once, above.
                # As the server's account, as the master does: built as root, a service
                # makes its files (the server secret, the lock table) root's.
                built = _as_the_server(config, lambda: _services(config_path, master_config))
                said = {f.text for f in found}
                found += [f for f in built if f.text not in said]
    if config is not None and (problem := metrics_problem(config, master_config)) is not None:
        found.append(_Found(problem))
    for line in found:
        print(line.text)
    errors = sum(not f.warning for f in found)
    warnings = len(found) - errors
    if errors or (warnings and args.strict):
        if not errors:
            print(f"{_count(warnings, 'warning')}, refused with --strict")
        return EX_CONFIG
    if warnings:
        print(f"configuration OK, with {_count(warnings, 'warning')}")
    else:
        print("configuration OK")
    return 0


def _services(config_path: str, master_config: cyrus.MasterConfig) -> list[_Found]:
    """check_services' problems, and the warnings it tells (a service's TLS settings, a
    service's own -C file's: printed by the master's code as "pop3d-master: ...", --strict
    passed them over, found re-probing)."""
    told: list[str] = []
    problems, _ = check_services(config_path, master_config, None, report=told.append)
    return _errors(problems) + [_Found(line, warning=True) for line in told]


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _worker_start(config: Config) -> list[_Found]:
    """Whether cyrus_user can run this interpreter and import pop3d, as the master asks
    before anything else (cli/master.py)."""
    try:
        account = privileges.target(config)
    except ConfigError:
        return []  # said by _as_the_server, as the master's one problem
    problem = worker_start_problem(config, account)
    return [] if problem is None else [_Found(str(problem))]


def _as_the_server(config: Config, check: Callable[[], list[_Found]]) -> list[_Found]:
    """``check``'s findings, found as the account the server runs as. Run as root with
    ``cyrus_user`` set, in a child that becomes that account first, as the master does
    before its own checks: a file only that account must read is read as it (found
    probing: a TLS key only root could read was "configuration OK", and the master then
    refused to start, exit 78), and what building a service makes on first use (the
    server secret, the maildrop lock table) is made as the master would make it. Made by
    root, mode 0600, the master could not read it and exited 78: found probing, contrib's
    ExecStartPre kept a fresh install with cyrus_user down for good.

    An account the master could not become (no such user or group, root's) is the one
    problem then, as it is the master's."""
    try:
        account = privileges.target(config)
    except ConfigError as exc:
        return _from_problems(exc.problems)
    if os.geteuid() != 0 or account is None:
        return check()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (a child: its result comes back through the pipe)
        status = 0
        try:
            os.close(read_end)
            try:
                privileges.drop(config)
                found = check()
            except Exception as exc:
                found = [_Found(f"cannot check the files as cyrus_user {account.user}: {exc}")]
            with os.fdopen(write_end, "w", encoding="utf-8") as out:
                json.dump([[f.text, f.warning] for f in found], out)
            sys.stderr.flush()  # a service's -C file's warnings; os._exit flushes nothing
        except BaseException:
            status = 70
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, encoding="utf-8") as answer:
        text = answer.read()
    _pid, status = os.waitpid(child, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return [_Found(f"cannot check the files as cyrus_user {account.user}")]
    return [_Found(str(line), bool(warning)) for line, warning in json.loads(text)]


def _check_references(config: Config) -> list[_Found]:
    """Problems with what the settings point at: files, modes, certificates."""
    found: list[_Found] = []
    try:
        path = credentials_path(config)
        credentials.CredentialFile(path).check()
        if not path.exists():
            found.append(
                _Found(
                    f"{config.where('credentials_file')}: warning: {path} does not "
                    "exist yet (no user can log in)",
                    warning=True,
                )
            )
    except ConfigError as exc:
        found += _from_problems(exc.problems)
    except (CredentialFileError, OSError) as exc:
        found.append(_Found(str(config.problem_with("credentials_file", None, str(exc)))))
    try:
        store = store_from_config(config)
    except ConfigError as exc:
        found += _from_problems(exc.problems)
    else:
        if store.lock_table is not None and (trouble := check_table(store.lock_table)):
            where = config.where("maildrop_lock")
            found.append(_Found(f"{where}: error: maildrop_lock: {trouble}"))
    if tls.certificate_configured(config, None):
        warnings: list[Problem] = []
        try:
            tls.server_context(config, None, warnings)
        except ConfigError as exc:
            found += _from_problems(exc.problems)
        found += _from_problems(warnings)
    if (trouble := syslog_problem(config)) is not None:
        found.append(_Found(trouble))
    return found


def manual_pages() -> dict[str, Path]:
    """The installed pages, by file name (``pop3d.8``): package data of ``pop3d.man``."""
    root = resources.files("pop3d.man")
    return {
        item.name: Path(str(item))
        for item in root.iterdir()
        if item.name.rpartition(".")[2] in ("5", "8")
    }


def cmd_man(args: argparse.Namespace) -> int:
    """No page: list them with their paths. A page: ``man -l`` it on a terminal, else write
    its roff source (``pop3d-admin man pop3d | man -l -``)."""
    pages = manual_pages()
    if args.page is None:
        for name, path in sorted(pages.items()):
            print(f"{name}\t{path}")
        return 0
    wanted = args.page.removesuffix(".5").removesuffix(".8")
    found = [path for name, path in pages.items() if name.rpartition(".")[0] == wanted]
    if not found:
        known = ", ".join(sorted(name.rpartition(".")[0] for name in pages))
        fail(PROGRAM, EX_USAGE, f"no manual page {args.page!r} (pages: {known})")
    viewer = shutil.which("man")
    if sys.stdout.isatty() and viewer is not None:
        return subprocess.run([viewer, "-l", str(found[0])], check=False).returncode
    sys.stdout.write(found[0].read_text("utf-8"))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    args.config = file_named(PROGRAM, "-C", args.config)
    if getattr(args, "cyrus_conf", None) is not None:
        args.cyrus_conf = file_named(PROGRAM, "-M", args.cyrus_conf)
    if args.command == "man":
        return cmd_man(args)
    if args.command == "check-config":
        return cmd_check_config(args.config, args)
    config = _config(args.config)
    os.umask(0o077)
    try:
        if args.command == "passwd":
            return cmd_passwd(config, args)
        if args.command == "users":
            return cmd_users(config, args)
        _become_cyrus_user(config)
        if args.command == "import":
            return cmd_import(config, args)
        return cmd_deliver(config, args)
    except (CredentialFileError, ConfigError) as exc:
        fail(PROGRAM, EX_CONFIG, str(exc))


def _become_cyrus_user(config: Config) -> None:
    """Run as root, ``deliver`` and ``import`` become ``cyrus_user`` first, as Cyrus's own
    tools do: the Maildirs, messages and locks they make must belong to the account the
    server reads them as (made by root, mode 0600, the server could not open them). What
    they read (the message on stdin, an import's source and password file) must then be
    readable by that account. Without cyrus_user nothing changes."""
    if os.geteuid() != 0 or config.string("cyrus_user") is None:
        return
    try:
        privileges.drop(config)
    except OSError as exc:
        fail(PROGRAM, EX_TEMPFAIL, f"cannot become cyrus_user: {exc}")  # an MTA retries


def entry() -> None:
    run(PROGRAM, main)


if __name__ == "__main__":
    entry()
