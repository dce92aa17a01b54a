"""What a sans-I/O core asks of its driver, and the two events every core shares.

A core (the POP3 session, a SASL mechanism, the KPOP handshake) that needs the world (a
password check, a file, a clock, a blocking library call) yields a :class:`Request`; the
driver carries it out and hands the result back. Each request names its result type in
its docstring. Cores that talk to a peer also emit :class:`Send` (bytes to write, in order)
and :data:`NEED_DATA` ("feed me more input"), h11's shapes. This module is the bottom of
the package: it imports nothing of ours.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


@dataclass(frozen=True, slots=True)
class Send:
    data: bytes


class Request:
    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Offload(Request):
    """Run ``call`` off the event loop: a blocking library call whose state the core owns
    (a GSSAPI accept step on the core's own security context, an AP-REQ check against the
    keytab, a KDC round trip). -> what ``call`` returns; if it raises an ``Exception``, the
    exception object is the result (returned, not raised), so the core decides what a
    failure means. ``what`` names the work in logs."""

    call: Callable[[], object]
    what: str
