"""Canonical user names, decided once for every login method.

A user name reaches the file system (the Maildir path template) and the logs, so the rules
are strict: 1-255 octets of UTF-8, no control characters, no "/", ":" or "\\", no leading
".", "#" or "-", no surrounding spaces. ``username_tolower`` (Cyrus, default on) folds case; with
``virtdomains`` the ``defaultdomain`` is dropped so "alice@example.org" and "alice" are one
user when example.org is the default domain. Without ``virtdomains``, a realm listed in
``loginrealms`` is dropped the same way (Kerberos and SASL logins arrive as user@REALM).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

_FORBIDDEN = frozenset("/:\\")


@dataclass(frozen=True, slots=True)
class IdentityRules:
    username_tolower: bool = True
    virtdomains: bool = False
    defaultdomain: str = ""
    loginrealms: frozenset[str] = frozenset()  # lower case
    subfolders: bool = False  # popsubfolders: "user+folder" opens the folder .folder


def _allowed_characters(name: str) -> bool:
    """No path separator, colon, or C0/C1 control character (or DEL); beyond ASCII, no
    character that shows nothing or moves the text: format characters (a zero-width space,
    a right-to-left override, a BOM), other spaces, line and paragraph separators, private
    use. "x\u200b" made a Maildir that `users` and every log line showed as "x" (found
    probing)."""
    if name.isascii():  # every login: C calls, not a Python step per character
        return name.isprintable() and _FORBIDDEN.isdisjoint(name)
    return not any(
        ch in _FORBIDDEN or ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 or _unseen(ch) for ch in name
    )


# Categories of characters that show nothing: format characters (but for the joiners below),
# spaces, separators, private use, surrogates, and code points not assigned (noncharacters
# among them), whose look no one can tell.
_UNSEEN = frozenset({"Cf", "Zs", "Zl", "Zp", "Co", "Cs", "Cn"})
# Format characters that real names hold: ZWNJ and ZWJ in Persian, Sinhala, Indic scripts
# (PRECIS allows them in context; refused, such users could not log in: found probing).
_JOINERS = frozenset("\u200c\u200d")
# Letters, symbols and marks that show as nothing: Hangul fillers, the braille blank, the
# combining grapheme joiner, variation selectors (found probing: "x\u3164" listed as "x").
_BLANK = frozenset("\u115f\u1160\u3164\uffa0\u2800\u034f\u180b\u180c\u180d\u180f")


def _unseen(ch: str) -> bool:
    if ord(ch) <= 0x7F or ch in _JOINERS:
        return False
    if ch in _BLANK or "\ufe00" <= ch <= "\ufe0f" or "\U000e0100" <= ch <= "\U000e01ef":
        return True
    return unicodedata.category(ch) in _UNSEEN


def canonical_user(raw: bytes | str, rules: IdentityRules) -> str | None:
    """The canonical form of ``raw``, or None if it cannot name a user."""
    if isinstance(raw, bytes):
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    else:
        name = raw
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: bytes that were not UTF-8 (argv)
        return None
    if not name or name != name.strip() or size > 255:
        return None
    # "#" first: the credential file's line for it would be a comment (`pop3d-admin passwd
    # '#x'` added a user no login could find nor passwd -d remove; found probing). "-"
    # first: on a command line (an MTA's `pop3d-admin deliver ${user}`, a site's scripts)
    # it reads as an option; "--help" had deliver print its help, exit 0, and the mail was
    # lost (found probing).
    if name.startswith((".", "#", "-")) or not _allowed_characters(name):
        return None
    if rules.username_tolower:
        name = name.lower()
        # Lower case can be longer: "\u0130" (2 octets) is "i\u0307" (3). Measured again,
        # or 127 of them (254 octets) made a 381-octet name: stored by passwd, then too
        # long for a file name at every delivery and login (found probing).
        if len(name.encode("utf-8")) > 255:
            return None
    if "@" in name:
        local, _, domain = name.rpartition("@")
        # A domain is a folder of its own under maildir_path's %d: "x@.." would be the
        # spool's parent, "y@." the same Maildir as "y", and "x@y." another than "x@y".
        if not local or not domain or domain.startswith(".") or domain.endswith("."):
            return None
        if rules.virtdomains:
            if rules.defaultdomain and domain.lower() == rules.defaultdomain.lower():
                name = local
        elif domain.lower() in rules.loginrealms:
            name = local
    return name


def login_realm(raw: bytes | str, rules: IdentityRules) -> str:
    """The realm :func:`canonical_user` drops from ``raw`` as one of ``loginrealms``, as the
    client spelled it ("alice@EXAMPLE.ORG" -> "EXAMPLE.ORG"); "" when it drops none."""
    if rules.virtdomains or not rules.loginrealms:
        return ""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return ""
    local, at, domain = raw.rpartition("@")
    if at and local and domain.lower() in rules.loginrealms:
        return domain
    return ""


_FOLDER_MAX = 254  # "." + the name: one directory entry


def split_folder(raw: bytes | str, rules: IdentityRules) -> tuple[str, str | None] | None:
    """``(login name, folder)``. With ``popsubfolders``, ``user+folder`` and (whatever
    ``virtdomains`` says) ``user+folder@domain`` give ``("user", "folder")`` and
    ``("user@domain", "folder")``; ``user+`` is the user's INBOX, as in Cyrus (an empty
    folder name selects none). Otherwise, or without a "+", ``(name, None)``. None when
    ``raw`` is not UTF-8 or the folder is not a valid one (:func:`valid_folder`): such a
    name names nobody."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not rules.subfolders or "+" not in raw:
        return raw, None
    user, _, rest = raw.partition("+")
    folder, at, domain = rest.rpartition("@") if "@" in rest else (rest, "", "")
    if not folder:
        return f"{user}{at}{domain}", None
    if not valid_folder(folder):
        return None
    return f"{user}{at}{domain}", folder


def valid_folder(name: str) -> bool:
    """A Maildir++ folder name that stays one directory entry (``.name``) in the Maildir:
    dot-separated parts, none empty (so no ".", ".." or leading dot), none of the "/", ":"
    and "\\" a user name may not hold either, no control character, at most 254 octets."""
    return (
        0 < len(name.encode("utf-8")) <= _FOLDER_MAX
        and all(name.split("."))
        and not any(ch in _FORBIDDEN or ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in name)
    )
