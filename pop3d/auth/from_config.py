"""The credential side's settings read from imapd.conf, in one place for every program that
needs them (the server, ``pop3d-admin``, the demo): where the credential file and the
server secret live, the identity rules, the Argon2 parameters, and which stored schemes the
enabled login methods need."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pop3d.auth.credentials import SCHEME_PLAIN_B64
from pop3d.auth.identity import IdentityRules
from pop3d.auth.passwords import Argon2Parameters
from pop3d.config.imapd import Config, ConfigError, Problem
from pop3d.sasl import keytab, registry


def credentials_path(config: Config, service: str | None = None) -> Path:
    explicit = config.string("credentials_file", service)
    if explicit:
        return Path(explicit)
    directory = config.string("configdirectory", service)
    if not directory:
        raise ConfigError(
            [Problem(config.path, 0, "configdirectory (or credentials_file) must be set")]
        )
    return Path(directory) / "pop3d.passwd"


def secret_path(config: Config, service: str | None = None) -> Path:
    explicit = config.string("server_secret_file", service)
    if explicit:
        return Path(explicit)
    return credentials_path(config, service).with_name("pop3d.secret")


def needed_schemes(config: Config, services: Iterable[str] | None = None) -> set[str]:
    """What the enabled login methods need stored: SCRAM keys per enabled SCRAM hash, and
    the plaintext equivalent only when APOP or a legacy mechanism that needs it is on, on
    any of pop3d's ``services`` (default: every service some key is set for): one
    credential file serves them all. pop3d-admin passwd once read the unprefixed settings
    only, so with pop3s_allowapop: yes no password it set could log in with APOP on
    pop3s."""
    wanted: set[str] = set()
    for service in (None, *(config.services() if services is None else services)):
        mechanisms = registry.enabled(config.string("sasl_mech_list", service))
        wanted |= registry.credentials_for(mechanisms)
        if config.switch("allowapop", service):
            wanted.add(SCHEME_PLAIN_B64)
    return wanted


def identity_rules(config: Config, service: str | None = None) -> IdentityRules:
    return IdentityRules(
        username_tolower=config.switch("username_tolower", service),
        virtdomains=(config.string("virtdomains", service) or "off") != "off",
        defaultdomain=config.string("defaultdomain", service) or "",
        loginrealms=frozenset((config.string("loginrealms", service) or "").lower().split()),
        subfolders=config.switch("popsubfolders", service),
    )


def users_beyond_credential_file(config: Config, services: Iterable[str] | None = None) -> bool:
    """Whether a user the credential file does not name may still log in: passwords are
    checked by saslauthd or the KDC (``sasl_pwcheck_method``), or a Kerberos mechanism is
    on (the realm vouches for its users). Mail for such a user must then be accepted:
    refused, a Kerberos site's MTA bounced every message (found probing). On any service:
    pop3s_sasl_pwcheck_method: saslauthd has pop3s's users beyond the file too."""
    return any(
        (config.string("sasl_pwcheck_method", service) or "auxprop") != "auxprop"
        or keytab.kerberos_wanted(config, service)
        for service in (None, *(config.services() if services is None else services))
    )


def argon2_parameters(config: Config, service: str | None = None) -> Argon2Parameters:
    return Argon2Parameters(
        memory_kib=config.integer("argon2_memory", service),
        passes=config.integer("argon2_passes", service),
    )
