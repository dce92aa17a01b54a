"""What a sans-I/O core asks of its driver.

A core (the POP3 session, a SASL mechanism, the KPOP handshake) that needs the world (a
password check, a file, a clock, a blocking library call) yields a :class:`Request`; the
driver carries it out and hands the result back. Each request names its result type in
its docstring. This module is the bottom of the package: it imports nothing of ours.
"""

from __future__ import annotations


class Request:
    __slots__ = ()
