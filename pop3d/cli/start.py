"""Where ``pop3d`` and ``pop3d-master`` start (console scripts, ``python -m pop3d``): SIGHUP
and SIGUSR2 are held before anything else is imported.

Their default action ends the process, and the master's or pop3d's imports take 0.3 s: a
reload asked in that time killed a master still starting, exit 129 (found probing), where
the manual pages promise a SIGHUP while starting never ends a process. ``main()`` held
them too late. This module imports nothing but :mod:`signal` (and :mod:`importlib`, loaded
with Python itself), so the signals are held from pop3d's first statement; only Python's
own start comes before it. ``python -m pop3d.cli.master`` and ``python -m pop3d.cli.pop3d``
hold them at the top of those modules.
"""

import importlib
import signal
from typing import NoReturn

# server/worker.py's HELD_AT_START (SIGHUP, and RETIRE_SIGNAL), which cannot be imported
# before the signals are held: tests/server/test_signals.py checks they are the same.
HELD_AT_START = frozenset({signal.SIGHUP, signal.SIGUSR2})
# pop3d's alone: SIGTERM's default action ended a pop3d still importing, exit 143 and
# nothing said, where pop3d(8) promises 0 after SIGTERM (found probing). Held through the
# imports only, which cannot block; pop3d's main() then takes it (pop3d.py).
HELD_WHILE_IMPORTING = frozenset({signal.SIGTERM})


def hold(also: frozenset[signal.Signals] = frozenset()) -> None:
    """Blocked, not ignored, as worker.hold_hangup: one asked meanwhile reaches the handler
    the master or pop3d installs, which releases them."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HELD_AT_START | also)


def master() -> None:
    _start("master")


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
