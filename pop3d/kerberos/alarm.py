"""An error line that a client can cause at will, held to one a minute.

A keytab without the key a ticket names is the operator's to mend, and says so in an error
line; but a ticket's kvno is in clear, so any client can send one naming a key that never
was, each (after failedloginpause) another "keytab is likely out of date" line: as many as
it has connections (found probing). The first is logged at once, then at most one per
:data:`INTERVAL`, telling how many were held back; every login still has its audit record.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

INTERVAL = 60.0


class Alarm:
    """Logs at ERROR, at most once per ``interval`` seconds; thread-safe (tickets are
    checked in the worker's threads)."""

    __slots__ = ("_clock", "_held", "_interval", "_last", "_lock", "_log")

    def __init__(
        self,
        log: logging.Logger,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last: float | None = None
        self._held = 0

    def __call__(self, message: str, *args: object) -> None:
        with self._lock:
            now = self._clock()
            if self._last is not None and now - self._last < self._interval:
                self._held += 1
                return
            held, self._held, self._last = self._held, 0, now
        if held:
            message += f" ({held} more in the last {self._interval:g} s not logged)"
        self._log.error(message, *args)
