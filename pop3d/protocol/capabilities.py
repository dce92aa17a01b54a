"""CAPA (RFC 2449 §6): the capability lines as data, in Cyrus's order. Each entry computes
its line from the session (None leaves it out), so "what is offered when" reads as a table,
and every security gate in it is the policy's.

Every line is listed in both states: RFC 2449 §5, "Capabilities available in the
AUTHORIZATION state MUST be announced in both states", and the descriptions of SASL (§6.3),
USER (§6.8) and STLS (RFC 2595 §4) say "both / no". Cyrus and Dovecot leave SASL, STLS and
USER out after login (found probing); a client that asks again after login is told what it
was told before, as the RFCs have it, though those commands are refused in TRANSACTION.
IMPLEMENTATION alone depends on the state: with ``serverinfo`` off or ``min`` the site keeps
the version from clients that have not logged in (RFC 2449 §6.9 points to the Security
Considerations for this), as Cyrus does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pop3d.security.policy import Action

if TYPE_CHECKING:
    from pop3d.protocol.session import Session


@dataclass(frozen=True, slots=True)
class Capability:
    line: Callable[[Session], str | None]


def _sasl(session: Session) -> str | None:
    from pop3d.protocol.sasl_auth import offered  # noqa: PLC0415 (sasl_auth imports us)

    mechanisms = offered(session)
    return "SASL " + " ".join(mechanisms) if mechanisms else None


def _permitted(action: Action, text: str) -> Callable[[Session], str | None]:
    def line(session: Session) -> str | None:
        allowed = session.settings.policy.permits(action, session.security).allowed
        return text if allowed else None

    return line


def _expire(session: Session) -> str:
    expire = session.settings.expire_seconds
    if expire < 0:
        return "EXPIRE NEVER"
    # Part of a day counts as a day: RFC 2449 §6.7's EXPIRE 0 tells the client to leave
    # nothing on the server, which a popexpiretime of 12h does not mean (found probing).
    return f"EXPIRE {-(-expire // 86400)}"


def _login_delay(session: Session) -> str | None:
    seconds = session.settings.min_poll_seconds
    return f"LOGIN-DELAY {seconds}" if seconds > 0 else None


def _fixed(text: str) -> Callable[[Session], str]:
    return lambda _session: text


def _implementation(session: Session) -> str | None:
    settings = session.settings
    if settings.serverinfo == "on" or not session.state.unauthenticated:
        return f"IMPLEMENTATION {settings.implementation}"
    return None


CAPABILITIES: tuple[Capability, ...] = (
    Capability(_sasl),
    Capability(_permitted(Action.OFFER_STLS, "STLS")),
    Capability(_expire),
    Capability(_login_delay),
    *(Capability(_fixed(name)) for name in ("TOP", "UIDL", "PIPELINING", "RESP-CODES")),
    Capability(_fixed("AUTH-RESP-CODE")),
    Capability(_permitted(Action.PLAINTEXT_LOGIN, "USER")),
    Capability(_implementation),
)


def lines(session: Session) -> list[str]:
    out = []
    for capability in CAPABILITIES:
        line = capability.line(session)
        if line is not None:
            out.append(line)
    return out
