"""LOGIN-DELAY (RFC 2449 §6.5) arithmetic, as Cyrus keeps it: the time of the last login is
stored with the maildrop (``pop3_last_login``) and ``popminpoll`` minutes must pass between
logins. ``poppollpadding`` lets a client that polls rarely bank early logins."""

from __future__ import annotations


def too_soon(min_poll: int, last_login: float | None, now: float) -> bool:
    return min_poll > 0 and last_login is not None and last_login + min_poll > now


def next_record(
    min_poll: int, padding: int, login_time: float, last_login: float | None
) -> float | None:
    """What to store as the last login when this session commits; None: store nothing.

    Without padding (1) it is the login time. With padding p > 1 the stored time advances
    by one ``min_poll`` per login, but never lags more than p intervals behind, so a client
    may log in early up to p-1 times after a quiet spell (Cyrus's pop3d.c does the same).
    """
    if min_poll <= 0:
        return None
    if padding <= 1:
        return login_time
    earliest = login_time - min_poll * padding
    if last_login is None or last_login < earliest:
        return earliest + min_poll
    return last_login + min_poll


def describe(seconds: int) -> str:
    if seconds % 60 == 0:
        minutes = seconds // 60
        return f"{minutes} minute{'' if minutes == 1 else 's'}"
    return f"{seconds} second{'' if seconds == 1 else 's'}"
