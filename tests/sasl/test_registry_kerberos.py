"""The registry and the Kerberos mechanisms: enabled only with a keytab (or when named),
GSSAPI early on the CAPA line, and the layer-capable ones offered below the minimum SSF."""

from __future__ import annotations

import pytest

from pop3d.sasl import registry
from pop3d.sasl.mechanism import Flag
from pop3d.security.policy import Policy
from pop3d.security.value import Security, TLSInfo

KERBEROS = {"GSSAPI", "GS2-KRB5", "GS2-KRB5-PLUS", "GSS-SPNEGO"}


def test_kerberos_mechanisms_need_a_keytab_to_be_enabled_by_default() -> None:
    assert not KERBEROS & set(registry.enabled(None))
    with_keytab = registry.enabled(None, kerberos=True)
    assert set(with_keytab) >= KERBEROS
    assert with_keytab[0] == "GSSAPI"  # fetchmail reads CAPA in 64-byte chunks


def test_mech_list_names_them_explicitly() -> None:
    assert registry.enabled("plain gssapi gs2-krb5") == ("GSSAPI", "GS2-KRB5", "PLAIN")


def test_flags() -> None:
    for name in KERBEROS:
        mechanism = registry.get(name)
        assert mechanism is not None and mechanism.flags & Flag.KERBEROS
        assert bool(mechanism.flags & Flag.SECURITY_LAYER) == (name in {"GSSAPI", "GSS-SPNEGO"})


def test_minimum_layer_keeps_only_mechanisms_with_a_layer() -> None:
    names = registry.enabled(None, kerberos=True)
    policy = Policy(allow_plaintext=True, minimum_ssf=56)
    assert registry.offered(names, policy, Security()) == ["GSSAPI", "GSS-SPNEGO"]
    protected = Security(tls=TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256))
    assert "SCRAM-SHA-256" in registry.offered(names, policy, protected)


def test_gs2_plus_needs_a_channel_binding() -> None:
    names = registry.enabled(None, kerberos=True)
    plain = registry.offered(names, Policy(), Security())
    assert "GS2-KRB5" in plain and "GS2-KRB5-PLUS" not in plain
    bindings = (("tls-server-end-point", b"x" * 32),)
    bound = Security(tls=TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256, None, bindings))
    assert "GS2-KRB5-PLUS" in registry.offered(names, Policy(), bound)


@pytest.mark.parametrize(
    ("minimum", "maximum", "security", "expected"),
    [
        (0, 256, Security(), (0, 256, True)),
        (56, 256, Security(), (56, 256, False)),  # clear: the layer must bring it all
        (56, 256, Security(external_ssf=40), (16, 216, False)),  # -p 40: the rest
        (56, 256, Security(tls=TLSInfo("TLSv1.3", "x", 256)), (0, 0, True)),  # TLS: none
        (1, 512, Security(tls=TLSInfo("TLSv1.3", "x", 256)), (0, 256, True)),
    ],
)
def test_layer_range_is_net_of_the_transport(
    minimum: int, maximum: int, security: Security, expected: tuple[int, int, bool]
) -> None:
    """libsasl's rule: a mechanism's layer must bring sasl_minimum_layer minus what the
    transport gives, and may bring up to sasl_maximum_layer minus it."""
    got = Policy(minimum_ssf=minimum, maximum_ssf=maximum).layer_range(security)
    assert (got.low, got.high, got.none_ok) == expected
