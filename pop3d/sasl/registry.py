"""Which mechanisms exist, which are enabled, and which are offered on a connection.

Order is strength, strongest first, with the Kerberos mechanisms at the front: fetchmail
reads CAPA in 64-byte chunks and misses a name split across two, so the one it most needs
(GSSAPI) must come early on the line.

* enabled = ``sasl_mech_list`` when set (names this build lacks are ignored with a warning
  when the config is read, and OAUTHBEARER/XOAUTH2 without ``oauth_issuer`` too), else
  every mechanism that is not LEGACY (and not TOKEN unless
  token validation is configured, not KERBEROS unless a keytab is: a site without
  Kerberos should not advertise mechanisms that can only fail);
* offered = what :meth:`Policy.offers_mechanism` allows given each mechanism's flags: no
  plaintext mechanisms where passwords may not cross, no -PLUS without a channel binding,
  no EXTERNAL without a transport identity, and below ``sasl_minimum_layer`` only
  mechanisms that negotiate a layer of their own.
"""

from __future__ import annotations

from collections.abc import Iterable

from pop3d.config.imapd import Config, Problem
from pop3d.sasl.cram_md5 import CramMd5
from pop3d.sasl.digest_md5 import DigestMd5
from pop3d.sasl.external import External
from pop3d.sasl.gs2 import family as gs2_family
from pop3d.sasl.gssapi import GSSAPI
from pop3d.sasl.login import Login
from pop3d.sasl.mechanism import Flag, Mechanism
from pop3d.sasl.oauth import OAuthBearer, XOAuth2
from pop3d.sasl.plain import Plain
from pop3d.sasl.scram import family as scram_family
from pop3d.sasl.spnego import GSSSpnego
from pop3d.security.policy import Policy
from pop3d.security.value import Security

ORDER = (
    "GSSAPI",
    "GS2-KRB5-PLUS",
    "GS2-KRB5",
    "GSS-SPNEGO",
    "SCRAM-SHA-512-PLUS",
    "SCRAM-SHA-256-PLUS",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-512",
    "SCRAM-SHA-256",
    "SCRAM-SHA-1",
    "EXTERNAL",
    "OAUTHBEARER",
    "XOAUTH2",
    "DIGEST-MD5",
    "CRAM-MD5",
    "PLAIN",
    "LOGIN",
)

_MECHANISMS: dict[str, Mechanism] = {
    mechanism.name: mechanism
    for mechanism in (
        GSSAPI(),
        *gs2_family(),
        GSSSpnego(),
        *scram_family(),
        Plain(),
        Login(),
        External(),
        OAuthBearer(),
        XOAuth2(),
        DigestMd5(),
        CramMd5(),
    )
}


def config_problems(config: Config) -> list[Problem]:
    """Warnings for ``sasl_mech_list`` names (any service's) that this build lacks, or
    that cannot work as configured (a token mechanism without ``oauth_issuer``)."""
    problems = []
    for key, setting in config.settings.items():
        if not key.endswith("sasl_mech_list") or not isinstance(setting.value, str):
            continue
        service = key.removesuffix("sasl_mech_list").removesuffix("_") or None
        for name in setting.value.upper().split():
            if name not in _MECHANISMS:
                message = f"{key}: SASL mechanism {name} is not offered by this build (ignored)"
                problems.append(Problem(setting.path, setting.line, message, "warning"))
            elif _MECHANISMS[name].flags & Flag.TOKEN and not config.string(
                "oauth_issuer", service
            ):
                message = f"{key}: {name} needs oauth_issuer to check tokens (not offered)"
                problems.append(Problem(setting.path, setting.line, message, "warning"))
    return problems


def names() -> frozenset[str]:
    """Every mechanism this build implements."""
    return frozenset(_MECHANISMS)


def is_mechanism(name: bytes) -> bool:
    """Whether ``name`` (any case) names a mechanism of this build: what a log may show of
    the word a client sent where a mechanism name belongs."""
    return name.decode("ascii", "replace").upper() in _MECHANISMS


def get(name: str) -> Mechanism | None:
    return _MECHANISMS.get(name.upper())


def credentials_for(names: Iterable[str]) -> set[str]:
    """The credential schemes the given mechanisms need (what passwd must store)."""
    return {
        scheme for name in names if name in _MECHANISMS for scheme in _MECHANISMS[name].credentials
    }


def enabled(
    mech_list: str | None, token_validation: bool = False, kerberos: bool = False
) -> tuple[str, ...]:
    """``kerberos``: an acceptor keytab is configured (``sasl_keytab``)."""
    if mech_list is not None:
        # Named or not, a token mechanism is not offered without a token validator: every
        # login through it could only fail (config_problems warns).
        wanted = {word.upper() for word in mech_list.split()}
        return tuple(
            name
            for name in ORDER
            if name in wanted
            and name in _MECHANISMS
            and (token_validation or not _MECHANISMS[name].flags & Flag.TOKEN)
        )
    chosen = []
    for name in ORDER:
        mechanism = _MECHANISMS.get(name)
        if mechanism is None or mechanism.flags & Flag.LEGACY:
            continue
        if mechanism.flags & Flag.TOKEN and not token_validation:
            continue
        if mechanism.flags & Flag.KERBEROS and not kerberos:
            continue
        chosen.append(name)
    return tuple(chosen)


def offered(enabled_names: Iterable[str], policy: Policy, security: Security) -> list[str]:
    """The enabled mechanisms this connection may use, strongest first. The policy decides;
    the flags say what each mechanism needs."""
    out = []
    for name in enabled_names:
        flags = _MECHANISMS[name].flags
        if policy.offers_mechanism(
            security,
            password_in_clear=bool(flags & Flag.PLAINTEXT),
            needs_binding=bool(flags & Flag.CHANNEL_BINDING),
            needs_client_identity=bool(flags & Flag.TRANSPORT_IDENTITY),
            negotiates_layer=bool(flags & Flag.SECURITY_LAYER),
        ):
            out.append(name)
    return out
