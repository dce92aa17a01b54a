"""The transport security policy: what a connection may do, given how it is protected.

Every decision of the kind "is this connection protected enough for X" is made here, from
the one :class:`~pop3d.security.value.Security` value the transport keeps: which commands
may carry a credential (:meth:`Policy.permits`), which SASL mechanisms are offered
(:meth:`Policy.offers_mechanism`), which security layers a mechanism may negotiate
(:meth:`Policy.layer_range`), whether a login pays the plaintext pause. Cyrus semantics:

* a connection is *protected* (:func:`confidential`) when the layer below the session
  has a strength (SSF) above 1: a TLS cipher, an external layer declared with ``-p ssf``
  (a TLS-terminating proxy, an IPsec link), or a SASL confidentiality layer. A TLS session
  with a NULL cipher (SSF 0) is not: it has integrity at most;
* ``tls_required`` refuses every login until TLS is active (``-p`` does not satisfy it);
* ``allowplaintext`` lets passwords travel over an unprotected connection;
* ``sasl_minimum_layer``: logins that negotiate no layer of their own (USER/PASS, APOP)
  need a transport of at least that strength. Cyrus applies the minimum to AUTH only and
  lets USER/PASS through a weaker connection; a site that asks for a minimum layer means
  it for every password, so we apply it to every login. A SASL mechanism that can
  negotiate a layer of its own (GSSAPI) is offered below the minimum: it must then bring
  the rest (libsasl's ``min_ssf - external_ssf``).
* ``sasl_maximum_layer`` caps the same sum: over TLS of 256 bits and the default maximum
  of 256, GSSAPI negotiates no layer (no encryption inside encryption), as with Cyrus.
* KPOP (``pop3d -k``): the Kerberos handshake before the greeting already decided who the
  client is, so USER/PASS (which then carries no password) is the one login, whatever the
  transport (Cyrus's ``kflag`` exemption; ``allowplaintext``, ``tls_required`` and
  ``sasl_minimum_layer`` guard passwords, and none crosses); APOP, AUTH and STLS are refused
  (fetchmail cannot run KPOP inside TLS). The service is off unless configured.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pop3d.security.value import Security


def confidential(security: Security) -> bool:
    """Whether the layers below the session keep a password secret: libsasl counts an
    external layer as lifting ``SASL_SEC_NOPLAINTEXT`` only at an SSF above 1, and Cyrus
    hands it TLS's cipher bits as that SSF. So a TLS session counts by its cipher: one
    with a NULL cipher (``tls_ciphers: eNULL:@SECLEVEL=0``, SSF 0) sends a password in
    clear, and counted as protected it was offered USER/PASS and PLAIN under
    ``allowplaintext: no`` (found probing). TLS replaces ``-p`` once negotiated
    (:attr:`Security.transport_ssf`)."""
    return security.transport_ssf > 1 or (security.layer is not None and security.layer.ssf > 1)


class Action(enum.Enum):
    PLAINTEXT_LOGIN = "USER/PASS"
    APOP = "APOP"
    SASL = "AUTH"
    OFFER_STLS = "STLS"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str = ""


ALLOWED = Decision(True)


@dataclass(frozen=True, slots=True)
class LayerRange:
    """What a SASL security layer may add: its own SSF within [low, high]; ``none_ok`` when
    the connection already meets the minimum without one."""

    low: int
    high: int
    none_ok: bool

    @property
    def feasible(self) -> bool:
        return self.none_ok or self.low <= self.high


@dataclass(frozen=True, slots=True)
class Policy:
    allow_plaintext: bool = False
    tls_required: bool = False
    starttls_offered: bool = False
    minimum_ssf: int = 0  # sasl_minimum_layer
    maximum_ssf: int = 256  # sasl_maximum_layer

    def permits(self, action: Action, security: Security) -> Decision:
        if security.kpop_principal is not None:
            if action is Action.PLAINTEXT_LOGIN:
                return ALLOWED
            return Decision(
                False,
                f"{action.value} is not available on a KPOP connection: the Kerberos "
                "handshake chose the user; log in with USER and PASS",
            )
        if action is Action.OFFER_STLS:
            if security.tls_active:
                return Decision(False, "TLS is already active")
            if self.starttls_offered and security.layer is None:
                return ALLOWED
            return Decision(False, "STLS is not available on this connection")
        if self.tls_required and not security.tls_active:
            return Decision(False, self._needs_tls_text(action))
        if action is Action.PLAINTEXT_LOGIN and not (
            confidential(security) or self.allow_plaintext
        ):
            if security.tls_active:  # a NULL cipher: STLS or pop3s would not help
                return Decision(
                    False,
                    f"{action.value} is only permitted on an encrypted connection; this "
                    f"connection's TLS cipher does not encrypt (ssf {security.ssf})",
                )
            return Decision(False, self._needs_tls_text(action))
        if action is not Action.SASL and security.ssf < self.minimum_ssf:
            return Decision(
                False,
                f"{action.value} needs a security layer of strength {self.minimum_ssf} or "
                f"more; this connection has {security.ssf}",
            )
        return ALLOWED

    def offers_mechanism(
        self,
        security: Security,
        *,
        password_in_clear: bool = False,
        needs_binding: bool = False,
        needs_client_identity: bool = False,
        negotiates_layer: bool = False,
    ) -> bool:
        """Whether a SASL mechanism with these needs is offered on this connection."""
        if not self.permits(Action.SASL, security).allowed:
            return False
        if password_in_clear and not self.permits(Action.PLAINTEXT_LOGIN, security).allowed:
            return False
        if needs_binding and not security.channel_bindings:
            return False
        if needs_client_identity and not security.client_identity:
            return False
        if security.ssf < self.minimum_ssf and not negotiates_layer:
            return False
        return not (negotiates_layer and not self.layer_range(security).feasible)

    def layer_range(self, security: Security) -> LayerRange:
        low = max(0, self.minimum_ssf - security.ssf)
        high = max(0, self.maximum_ssf - security.ssf)
        return LayerRange(low, high, none_ok=low == 0)

    def password_exposed(self, security: Security) -> bool:
        """The password just crossed a connection without confidentiality
        (``plaintextloginpause`` applies)."""
        return not confidential(security)

    def _needs_tls_text(self, action: Action) -> str:
        hint = "use STLS first" if self.starttls_offered else "connect with TLS (pop3s)"
        return f"{action.value} is only permitted on an encrypted connection; {hint}"
