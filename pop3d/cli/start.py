"""Where ``pop3d`` and ``pop3d-master`` start (console scripts, ``python -m pop3d``): SIGHUP,
SIGUSR2 and the signals pop3d ignores (SIGUSR1 ...) are held before anything else is
imported.

Their default action ends the process, and the master's or pop3d's imports take 0.3 s: a
reload asked in that time killed a master still starting, exit 129 (found probing), where
the manual pages promise a SIGHUP while starting never ends a process. ``main()`` held
them too late. This module imports nothing but :mod:`signal` (and :mod:`importlib`, loaded
with Python itself), so the signals are held from pop3d's first statement; only Python's
own start comes before it. ``python -m pop3d.cli.master`` and ``python -m pop3d.cli.pop3d``
hold them at the top of those modules.
"""

import importlib
import os
import signal
from typing import NoReturn

# server/worker.py's HELD_AT_START (SIGHUP, RETIRE_SIGNAL and IGNORED_SIGNALS), which
# cannot be imported before the signals are held: tests/server/test_signals.py checks they
# are the same.
HELD_AT_START: frozenset[int] = frozenset(
    {
        signal.SIGHUP,
        signal.SIGUSR2,
        signal.SIGUSR1,
        signal.SIGALRM,
        signal.SIGVTALRM,
        signal.SIGPROF,
        signal.SIGIO,
        signal.SIGPWR,
        signal.SIGSTKFLT,
        signal.SIGXCPU,
        *range(signal.SIGRTMIN, signal.SIGRTMAX + 1),
    }
)
# Stops held through the imports only, which cannot block; main() then takes them
# (stop_while_starting). Their default action ended a process still importing with nothing
# said, where the manual pages promise exit 0: pop3d 143 after SIGTERM, the master -15
# after SIGTERM and 130 after SIGINT (found probing). pop3d's SIGINT stays Ctrl-C's 130.
# SIGQUIT is a stop as SIGTERM is (worker.STOP_SIGNALS).
HELD_WHILE_IMPORTING = frozenset({signal.SIGTERM, signal.SIGQUIT})
MASTER_HELD_WHILE_IMPORTING = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})


def hold(also: frozenset[signal.Signals] = frozenset()) -> None:
    """Blocked, not ignored, as worker.hold_hangup: one asked meanwhile reaches the handler
    the master or pop3d installs, which releases them."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HELD_AT_START | also)


def stop_while_starting(program: str, stops: frozenset[signal.Signals]) -> None:
    """From here until the command's own handlers replace it, each of ``stops`` ends the
    process at once, exit 0 with a line saying so: nothing is served yet. Raised rather
    than held until those handlers are in place: a start-up that blocks (a debug_command,
    a file on a hung mount) must still stop, and what it runs must not inherit them held
    (the master's workers are spawned with its mask)."""

    def stopped(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        os.write(2, f"{program}: stopped by {name} while starting\n".encode())
        raise SystemExit(0)

    for signum in stops:
        signal.signal(signum, stopped)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)


def master() -> None:
    _start("master", MASTER_HELD_WHILE_IMPORTING)


def pop3d() -> None:
    _start("pop3d", HELD_WHILE_IMPORTING)


def _start(command: str, also: frozenset[signal.Signals] = frozenset()) -> None:
    hold(also)
    try:  # only once the signals are held
        module = importlib.import_module(f"pop3d.cli.{command}")
    except KeyboardInterrupt:
        _interrupted()
    module.entry()


def _interrupted() -> NoReturn:
    """Ctrl-C during the imports, before the command's own handling (exit 130) is in
    place: it printed a KeyboardInterrupt traceback (found probing)."""
    raise SystemExit(130)
