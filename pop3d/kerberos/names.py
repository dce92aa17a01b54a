"""Which local user a Kerberos principal may log in as: one rule for GSSAPI, GS2-KRB5,
GSS-SPNEGO and KPOP.

1. Where MIT's mapping is at hand (the drivers pass :func:`pop3d.kerberos.mit.aname_to_localname`),
   the site's ``auth_to_local`` rules in krb5.conf decide, or MIT's DEFAULT rule when the site
   has none (``user@DEFAULT.REALM`` -> ``user``). A rule can map what the plain rule would
   refuse (``alice/admin`` -> ``alice-admin``), and a site can refuse a default-realm user
   by rules: its krb5.conf is the policy.
2. ``user@REALM`` for a realm in ``loginrealms`` (case-insensitively, as
   :mod:`pop3d.auth.identity` treats that list), and, without MIT's mapping, for the
   default realm (exactly, as Kerberos compares realms).
3. Anything else is refused: an instance (``alice/admin@REALM`` is not ``alice``, as in
   Cyrus's KPOP) unless a rule maps it, an empty name, a realm we do not serve, a name with
   MIT's escapes (``\\@``, ``\\/``): refusing those means we never have to unescape.

Whatever a rule produces must still be a plain user name (no ``/``, ``@``, ``\\``, control
characters); anything else is ignored, and rule 2 decides. The identity rules canonicalise
the result afterwards like every other login (KPOP then compares it exactly).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

AuthToLocal = Callable[[str], "str | None"]


def _plain(name: str) -> bool:
    return bool(name) and name.isprintable() and not any(ch in name for ch in "/@\\\0")


def local_user(
    principal: str,
    default_realm: str | None,
    login_realms: Iterable[str] = (),
    auth_to_local: AuthToLocal | None = None,
) -> str | None:
    """The user ``principal`` (MIT's unparsed form) maps to, or None."""
    if auth_to_local is not None:
        mapped = auth_to_local(principal)
        if mapped is not None and _plain(mapped):
            return mapped
    name, at, realm = principal.rpartition("@")
    if not at or not realm or not _plain(name):
        return None
    realms = {r.lower() for r in login_realms}
    if realm.lower() in realms or (auth_to_local is None and realm == default_realm):
        return name
    return None
