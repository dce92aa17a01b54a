"""A wrapper for credentials so they never reach a log, a repr or a pickle by accident."""

from __future__ import annotations

import hmac
from typing import NoReturn


class Secret:
    """Bytes that must not be shown. ``reveal()`` is the only way to the value, which makes
    every use greppable."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = bytes(value)

    def reveal(self) -> bytes:
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __repr__(self) -> str:
        return "Secret(<redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        # Comparing secrets with == would be a timing oracle; make it impossible.
        raise TypeError("compare secrets with pop3d.security.secret.equal()")

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> NoReturn:
        raise TypeError("secrets are not picklable")


def equal(a: bytes, b: bytes) -> bool:
    """Constant-time equality: the time taken does not depend on where the inputs differ."""
    return hmac.compare_digest(a, b)
