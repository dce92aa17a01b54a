"""The file-descriptor limit: ``pop3d-master`` raises its soft ``RLIMIT_NOFILE`` to the hard
limit at start (its workers inherit it across exec) and says how many connections that
permits per worker.

What a connection costs in descriptors (counted from the code, checked by
tests/server/test_scale.py on a real worker):

* before login, plain or TLS: **1** (the socket; TLS is a layer over memory BIOs in the
  process, transport/tls_layer.py, so it costs no descriptor of its own);
* logged in: **2**: the socket, and the maildrop's lock (``pop3d.lock`` with its flock,
  storage/locks.py); with ``maildrop_lock: table``, **1**: the lock is a byte in a table
  whose 256 files the worker keeps open for all its sessions (counted with the reserve).
  The Maildir's directories are opened for the command that needs them and closed after
  it, not held by an idle session;
* while RETR/TOP streams a message: one more (the message file).

A worker also needs descriptors that are not any connection's: standard input/output/error,
its listening sockets, the status pipe and the login-limits socket to the master, the event
loop's epoll and self-pipe, the I/O threads' transient opens (a maildrop being opened and
listed, a commit's fsyncs), the credential file, log and audit files, the syslog socket,
metrics files. ``RESERVED`` keeps 64 for those, far more than a worker holds at rest (about
15), so that a burst of logins in the threads does not find the table full.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

from pop3d.storage import locks

RESERVED = 64
FDS_BEFORE_LOGIN = 1


def fds_logged_in(lock_in_maildir: bool = True) -> int:
    """A logged-in session's descriptors: its socket, and its lock unless in the table."""
    return 2 if lock_in_maildir else 1


def reserved(lock_in_maildir: bool = True) -> int:
    """What a worker keeps for itself: RESERVED, plus the lock table's files."""
    return RESERVED + (0 if lock_in_maildir else locks.SHARDS)


FDS_LOGGED_IN = fds_logged_in()  # with the default maildrop_lock
FDS_STREAMING = FDS_LOGGED_IN + 1


@dataclass(frozen=True, slots=True)
class Limit:
    before: int  # the soft limit we found
    soft: int  # the soft limit now
    hard: int
    lock_in_maildir: bool = True  # maildrop_lock: maildir (else table)

    @property
    def per_session(self) -> int:
        return fds_logged_in(self.lock_in_maildir)

    @property
    def reserved(self) -> int:
        """The worker's own descriptors: :data:`RESERVED`, and the lock table's files."""
        return reserved(self.lock_in_maildir)

    @property
    def logged_in(self) -> int:
        """Logged-in sessions one worker can hold, each streaming a message (worst case)."""
        return max(0, (self.soft - self.reserved) // (self.per_session + 1))

    @property
    def logged_in_idle(self) -> int:
        """Logged-in sessions one worker can hold when none is streaming a message."""
        return max(0, (self.soft - self.reserved) // self.per_session)

    @property
    def connections(self) -> int:
        """Connections one worker can hold before they log in."""
        return max(0, (self.soft - self.reserved) // FDS_BEFORE_LOGIN)

    def describe(self) -> str:
        if self.soft > self.before:
            how = f"raised from {self.before} to {self.soft} (the hard limit)"
        elif self.soft < self.hard:
            how = f"{self.soft} (could not be raised to the hard limit {self.hard})"
        else:
            how = f"{self.soft} (the hard limit)"
        what = "socket and maildrop lock" if self.lock_in_maildir else "the socket"
        return (
            f"file descriptors per process: {how}; each worker can hold "
            f"{self.logged_in_idle} logged-in sessions ({self.per_session} "
            f"{'descriptor' if self.per_session == 1 else 'descriptors'} each, "
            f"plain or TLS: {what}; {self.logged_in} if all stream a message at once, "
            f"{self.per_session + 1} each) or {self.connections} connections before login "
            f"(1 each), {self.reserved} descriptors kept for the worker itself"
        )


def current(lock_in_maildir: bool = True) -> Limit:
    """The limit this process has now (a worker: what the master raised it to)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = _nr_open()
    if hard == resource.RLIM_INFINITY:
        hard = _nr_open()
    return Limit(before=soft, soft=soft, hard=hard, lock_in_maildir=lock_in_maildir)


def raise_soft_limit(lock_in_maildir: bool = True) -> Limit:
    """Raise the soft RLIMIT_NOFILE as far as the hard limit allows (an unlimited hard
    limit: to the kernel's ``fs.nr_open``), and say what it became."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else _nr_open()
    new = soft
    if soft == resource.RLIM_INFINITY:
        new = target
    elif soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            new = target
        except (OSError, ValueError):
            new = soft
    return Limit(
        before=soft if soft != resource.RLIM_INFINITY else target,
        soft=new,
        hard=target,
        lock_in_maildir=lock_in_maildir,
    )


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open", encoding="ascii") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return 1 << 20  # Linux's default fs.nr_open
