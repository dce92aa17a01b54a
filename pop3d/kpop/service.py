"""``pop3d -k`` at service start: the acceptor, checked once, so that a broken installation
stops the master with exit 78 and file:line instead of failing the first login.

Checked: MIT libkrb5 loads and passes its layout self-check; the keytab (``sasl_keytab``,
else KRB5_KTNAME or krb5.conf's default) is a regular file, readable by us and by nobody in
its group or beyond (it holds the service's long-term keys: whoever reads it can pose as the
server to every user), and holds at least one ``pop/<host>`` key.

Which host: fetchmail asks for ``pop/<the host name it connected to>``, canonicalised by its
own Kerberos library (``krb5_sname_to_principal``), so the name depends on the client's
configuration and DNS, not on ours. Like MIT's ``krb5_recvauth`` with no server and
Heimdal's popper, the acceptor therefore takes a ticket for ``pop/<any host>`` whose key is
in the keytab: the keytab is the list of names the service answers to, and a site that wants
one name gives pop3d a keytab with that one key. The service must be ``pop`` and the name
must have exactly two components (``host/...`` tickets, whose key a system keytab also holds,
are refused: :mod:`pop3d.kerberos.mit`).
"""

from __future__ import annotations

import os
import stat

from pop3d.config.imapd import Config, ConfigError, Problem
from pop3d.kerberos import mit
from pop3d.kerberos.mit import Acceptor, KerberosUnavailable

SERVICE = "pop"


def _problem(config: Config, service: str | None, message: str) -> ConfigError:
    found = config.setting("sasl_keytab", service)
    if found is not None:
        return ConfigError([Problem(found.path, found.line, f"sasl_keytab: {message}")])
    return ConfigError([Problem(config.path, 0, f"pop3d -k: {message}")])


def _path(name: str) -> str | None:
    """The file of a keytab name; None for a keytab type we do not check (not a file)."""
    kind, colon, rest = name.partition(":")
    if not colon or kind.startswith("/"):
        return name
    if kind.upper() in ("FILE", "WRFILE"):
        return rest
    return None


def acceptor(config: Config, service: str | None = None) -> Acceptor:
    """The checked acceptor for ``pop3d -k``. -> ConfigError"""
    try:
        mit.library()
        name = config.string("sasl_keytab", service) or mit.default_keytab_name()
    except KerberosUnavailable as exc:
        raise _problem(config, service, f"Kerberos is unavailable: {exc}") from None
    path = _path(name)
    if path is None:
        raise _problem(config, service, f"keytab {name}: only file keytabs are supported")
    try:
        info = os.stat(path)
    except OSError as exc:
        raise _problem(config, service, f"keytab {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise _problem(config, service, f"keytab {path}: not a regular file")
    if info.st_mode & 0o077:
        raise _problem(
            config,
            service,
            f"keytab {path}: mode {stat.S_IMODE(info.st_mode):04o} lets others than its "
            "owner read the service keys (chmod 600)",
        )
    if not os.access(path, os.R_OK):
        raise _problem(config, service, f"keytab {path}: not readable by this user")
    try:
        entries = mit.keytab_principals(f"FILE:{path}")
    except KerberosUnavailable as exc:
        raise _problem(config, service, f"keytab {path}: {exc}") from None
    if not _hosts(entries):
        found = sorted({"/".join(parts) + "@" + realm for realm, parts in entries})
        raise _problem(
            config,
            service,
            f"keytab {path}: no {SERVICE}/<host> key (it holds {', '.join(found) or 'nothing'})",
        )
    return Acceptor(keytab=f"FILE:{path}", service=SERVICE, host=None)


def _hosts(entries: list[tuple[str, tuple[str, ...]]]) -> list[str]:
    return sorted({p[1] for _realm, p in entries if len(p) == 2 and p[0] == SERVICE})


def hosts(acceptor: Acceptor) -> list[str]:
    """The hosts of the ``pop/<host>`` keys the acceptor holds (for the start-up log)."""
    assert acceptor.keytab is not None
    return _hosts(mit.keytab_principals(acceptor.keytab))
