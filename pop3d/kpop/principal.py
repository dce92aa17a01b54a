"""Which local user a Kerberos principal may log in as (KPOP; the GSSAPI mechanisms follow
the same rule).

``user@REALM`` maps to ``user`` when REALM is the acceptor's default realm (exactly, as
Kerberos compares realms) or one of ``loginrealms`` (case-insensitively, as
:mod:`pop3d.auth.identity` treats that list). Anything else is refused: a principal with an
instance (``alice/admin@REALM`` is not ``alice``, as in Cyrus's KPOP), an empty name, a
realm we do not serve, or a name with MIT's escapes (``\\@``, ``\\/``): such a name cannot be
a plain user name, and refusing it means we never have to unescape. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable


def local_user(
    principal: str, default_realm: str | None, login_realms: Iterable[str] = ()
) -> str | None:
    """The user ``principal`` (MIT's unparsed form) maps to, or None."""
    if "\\" in principal or "/" in principal or "\0" in principal:
        return None
    user, at, realm = principal.partition("@")
    if not at or not user or not realm or "@" in realm:
        return None
    if realm == default_realm or realm.lower() in {r.lower() for r in login_realms}:
        return user
    return None
