"""The transport security policy: what a connection may do, given how it is protected.

Every command that sends or accepts a credential asks :meth:`Policy.permits`; nothing else in
the code base decides "is this connection protected enough". Cyrus semantics:

* a connection is *protected* when TLS is active or an external layer of strength > 1 was
  declared with ``-p ssf`` (a TLS-terminating proxy, an IPsec link);
* ``tls_required`` refuses every login until TLS is active (``-p`` does not satisfy it);
* ``allowplaintext`` lets passwords travel over an unprotected connection;
* ``sasl_minimum_layer``: logins that negotiate no layer of their own (USER/PASS, APOP)
  need a transport of at least that strength. Cyrus applies the minimum to AUTH only and
  lets USER/PASS through a weaker connection; a site that asks for a minimum layer means
  it for every password, so we apply it to every login. (SASL mechanisms that negotiate a
  layer are checked against it by the SASL layer.)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Action(enum.Enum):
    PLAINTEXT_LOGIN = "USER/PASS"
    APOP = "APOP"
    SASL = "AUTH"
    OFFER_STLS = "STLS"


@dataclass(slots=True)
class Protection:
    """How one connection is protected right now. Owned by the session; the driver reports
    changes (TLS started) through the session."""

    tls_active: bool = False
    tls_ssf: int = 0
    tls_version: str = ""
    tls_cipher: str = ""
    external_ssf: int = 0
    client_identity: str | None = None
    channel_bindings: dict[str, bytes] = field(default_factory=dict)

    @property
    def ssf(self) -> int:
        """Security strength factor. TLS replaces ``-p`` once negotiated, as in Cyrus."""
        return self.tls_ssf if self.tls_active else self.external_ssf

    @property
    def protected(self) -> bool:
        return self.tls_active or self.external_ssf > 1


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str = ""


ALLOWED = Decision(True)


@dataclass(frozen=True, slots=True)
class Policy:
    allow_plaintext: bool = False
    tls_required: bool = False
    starttls_offered: bool = False
    minimum_ssf: int = 0

    def permits(self, action: Action, protection: Protection) -> Decision:
        if action is Action.OFFER_STLS:
            if self.starttls_offered and not protection.tls_active:
                return ALLOWED
            return Decision(False, "STLS is not available on this connection")
        if self.tls_required and not protection.tls_active:
            return Decision(False, self._needs_tls_text(action))
        if action is Action.PLAINTEXT_LOGIN and not (protection.protected or self.allow_plaintext):
            return Decision(False, self._needs_tls_text(action))
        if action is not Action.SASL and protection.ssf < self.minimum_ssf:
            return Decision(
                False,
                f"{action.value} needs a security layer of strength {self.minimum_ssf} or "
                f"more; this connection has {protection.ssf}",
            )
        return ALLOWED

    def _needs_tls_text(self, action: Action) -> str:
        hint = "use STLS first" if self.starttls_offered else "connect with TLS (pop3s)"
        return f"{action.value} is only permitted on an encrypted connection; {hint}"
