"""Giving up root: Cyrus's ``cyrus_user`` and ``cyrus_group``.

A process started as root (``pop3d-master`` binding ports 110 and 995, ``pop3d`` started
by inetd or systemd as root) binds what it must, then becomes ``cyrus_user``: the user's
supplementary groups (``initgroups``, as Cyrus's ``become_cyrus`` does, so membership of
e.g. ``ssl-cert`` still opens the TLS key), then the group (``cyrus_group``, else the
user's primary group), then the user, in that order, and checks that root cannot be
regained. The master does it before it starts a worker, so no process that reads a byte
from a client ever runs as root.

Started as root without ``cyrus_user``, pop3d refuses to serve (exit 78) unless
``allow_root: yes`` says that is meant (the test lab, a container that is its own
sandbox). Started as anyone else, nothing changes: there is nothing to give up.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
from dataclasses import dataclass

from pop3d.config.imapd import Config

log = logging.getLogger("pop3d")


@dataclass(frozen=True, slots=True)
class Account:
    user: str
    uid: int
    gid: int


def target(config: Config) -> Account | None:
    """The account to become, or None to stay as we are; ConfigError (exit 78) for a
    root process without one, or an account that does not exist or is root."""
    user = config.string("cyrus_user")
    group = config.string("cyrus_group")
    if user is None:
        if os.geteuid() == 0 and not config.switch("allow_root"):
            raise config.error(
                "cyrus_user",
                None,
                "started as root and cyrus_user is not set: pop3d does not serve as root. "
                "Set cyrus_user (and cyrus_group) to the account it should run as, or "
                "allow_root: yes to serve as root anyway (not recommended)",
            )
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise config.error("cyrus_user", None, f"cyrus_user {user!r}: no such user") from None
    if entry.pw_uid == 0:
        raise config.error(
            "cyrus_user", None, f"cyrus_user {user!r} is root: name an unprivileged account"
        )
    gid = entry.pw_gid
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise config.error(
                "cyrus_group", None, f"cyrus_group {group!r}: no such group"
            ) from None
        if gid == 0:
            raise config.error(
                "cyrus_group", None, f"cyrus_group {group!r} is root's: name another group"
            )
    return Account(user, entry.pw_uid, gid)


def drop(config: Config) -> Account | None:
    """Become ``cyrus_user`` if we are root; the account we run as afterwards if it was
    changed, else None. Raises ConfigError (see :func:`target`) and OSError."""
    account = target(config)
    if os.geteuid() != 0:
        if account is not None and os.geteuid() != account.uid:
            log.warning(
                "not started as root: running as uid %d, not as cyrus_user %s",
                os.geteuid(),
                account.user,
            )
        return None
    if account is None:
        log.warning("serving as root (allow_root: yes)")
        return None
    os.initgroups(account.user, account.gid)  # setgroups: the user's groups and gid
    os.setgid(account.gid)
    os.setuid(account.uid)
    if os.getresuid() != (account.uid,) * 3 or os.getresgid() != (account.gid,) * 3:
        raise OSError(f"could not become {account.user} (uid {account.uid})")
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:  # pragma: no cover - the kernel would have to be broken
        raise OSError("root could be regained after setuid")
    os.environ.update(environment(account))
    log.info("running as %s (uid %d, gid %d)", account.user, account.uid, account.gid)
    return account


def environment(account: Account) -> dict[str, str]:
    """This process's environment as :func:`drop` leaves it for ``account``, which its
    children (the master's workers) inherit."""
    home = pwd.getpwuid(account.uid).pw_dir
    return {**os.environ, "HOME": home, "USER": account.user, "LOGNAME": account.user}
