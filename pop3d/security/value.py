"""The one description of how a connection is protected.

The transport builds it (TLS facts after a handshake, the ``-p`` external SSF, a SASL
layer's strength once negotiated); it is immutable, and each change makes a new value. It
holds facts only: every decision taken from it ("may a password cross?", "is
``sasl_minimum_layer`` met?", "which mechanisms are offered?") is made in
:mod:`pop3d.security.policy` and nowhere else.

SSF follows Cyrus and libsasl: TLS replaces ``-p`` once negotiated (a TLS session inside a
declared external layer is counted as the TLS session), and a SASL layer adds its own
strength to the transport's (libsasl asks a mechanism for ``min_ssf - external_ssf``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TLSInfo:
    version: str  # "TLSv1.3"
    cipher: str
    ssf: int  # the cipher's secret bits
    client_identity: str | None = None  # a verified client certificate's CN or email
    channel_bindings: tuple[tuple[str, bytes], ...] = ()  # (RFC 5056 type, data)


@dataclass(frozen=True, slots=True)
class LayerInfo:
    """A SASL security layer: integrity (SSF 1) or confidentiality (more)."""

    mechanism: str
    ssf: int


@dataclass(frozen=True, slots=True)
class Security:
    tls: TLSInfo | None = None
    external_ssf: int = 0  # -p: a layer below us the operator vouches for
    layer: LayerInfo | None = None
    # KPOP: the Kerberos principal a pre-greeting handshake proved. It authenticates the
    # login only: the session after it has neither integrity nor confidentiality (ssf 0).
    kpop_principal: str | None = None

    @property
    def tls_active(self) -> bool:
        return self.tls is not None

    @property
    def transport_ssf(self) -> int:
        return self.tls.ssf if self.tls is not None else self.external_ssf

    @property
    def ssf(self) -> int:
        return self.transport_ssf + (self.layer.ssf if self.layer is not None else 0)

    @property
    def channel_bindings(self) -> dict[str, bytes]:
        return dict(self.tls.channel_bindings) if self.tls is not None else {}

    @property
    def client_identity(self) -> str | None:
        return self.tls.client_identity if self.tls is not None else None

    def with_tls(self, tls: TLSInfo) -> Security:
        return dataclasses.replace(self, tls=tls)

    def with_layer(self, layer: LayerInfo) -> Security:
        return dataclasses.replace(self, layer=layer)

    def describe(self) -> str:
        """For logs: ``ssf=256 tls=TLSv1.3 layer=-``."""
        tls = self.tls.version if self.tls is not None else "no"
        layer = f"{self.layer.mechanism}/{self.layer.ssf}" if self.layer is not None else "-"
        kpop = " kpop=yes" if self.kpop_principal is not None else ""
        return f"ssf={self.ssf} tls={tls} layer={layer}{kpop}"
