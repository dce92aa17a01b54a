"""The acceptor keytab, checked once at start-up so that a broken one stops the master with
exit 78 and file:line instead of failing the first Kerberos login.

Kerberos is on when ``sasl_keytab`` is set, or when ``sasl_mech_list`` names a Kerberos
mechanism (then the default keytab, ``KRB5_KTNAME`` or the system one, is checked). The
keytab must be a file that exists, that we can read, that nobody but its owner can read
(it holds the service's long-term keys: whoever reads it can impersonate the server to
every user), and that holds a key for ``<service>/<servername>``.
"""

from __future__ import annotations

import os
import stat

import krb5

from pop3d.config.imapd import Config, ConfigError
from pop3d.kerberos import mit
from pop3d.sasl import registry
from pop3d.sasl.mechanism import Flag


def kerberos_wanted(config: Config, service: str | None = None) -> bool:
    if config.string("sasl_keytab", service):
        return True
    mech_list = config.string("sasl_mech_list", service)
    if mech_list is None:
        return False
    for name in mech_list.split():
        mechanism = registry.get(name)
        if mechanism is not None and mechanism.flags & Flag.KERBEROS:
            return True
    return False


def _reason(exc: krb5.Krb5Error) -> str:
    """The library's message without the error number python-krb5 appends to it."""
    text = " ".join(str(exc).split())
    head, _, tail = text.rpartition(" ")
    return head if head and tail.lstrip("-").isdigit() else text


def acceptor_keytab(
    config: Config,
    servername: str,
    service: str | None = None,
    principal_service: str = "pop",
    required_by: str | None = None,
) -> str | None:
    """The checked keytab's path for ``Context.keytab``, or None when Kerberos is off.
    Raises :class:`ConfigError` (file:line of ``sasl_keytab``, or of ``sasl_mech_list``, or
    of ``required_by``, when the default keytab is the one at fault). ``required_by``: the
    option that needs a keytab whatever the mechanisms (``sasl_pwcheck_method``)."""
    if required_by is None and not kerberos_wanted(config, service):
        return None
    configured = config.string("sasl_keytab", service)
    option = "sasl_keytab" if configured else (required_by or "sasl_mech_list")
    try:
        context = krb5.init_context()
    except krb5.Krb5Error as exc:
        # A krb5.conf that does not parse: the library refuses every call, so no Kerberos
        # login could work. Said now, as any other bad configuration, not at first login.
        raise config.error(option, service, mit.cannot_start(_reason(exc))) from None
    name = configured or krb5.kt_default_name(context).decode("utf-8", "replace")
    kind, colon, rest = name.partition(":")
    if colon and kind.upper() in ("FILE", "WRFILE"):
        path = rest
    elif colon and not kind.startswith("/"):
        raise config.error(option, service, f"keytab {name}: only file keytabs are supported")
    else:
        path = name

    def fail(message: str) -> ConfigError:
        return config.error(option, service, f"keytab {path}: {message}")

    try:
        info = os.stat(path)
    except OSError as exc:
        raise fail(exc.strerror or str(exc)) from None
    if not stat.S_ISREG(info.st_mode):
        raise fail("not a regular file")
    if info.st_mode & 0o077:
        raise fail(f"mode {stat.S_IMODE(info.st_mode):04o}: readable beyond its owner (chmod 600)")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise fail(f"cannot read it: {exc.strerror or exc}") from None
    wanted = f"{principal_service}/{servername.lower()}"
    try:
        entries = list(krb5.kt_resolve(context, f"FILE:{path}".encode()))
    except krb5.Krb5Error as exc:
        raise fail(f"not a keytab: {exc}") from None
    for entry in entries:
        components = [part.decode("utf-8", "replace") for part in entry.principal.components]
        if "/".join(components) == wanted:
            return path
    found = sorted({str(entry.principal) for entry in entries})
    raise fail(f"no key for {wanted} (it holds {', '.join(found) or 'nothing'})")
