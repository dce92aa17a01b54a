"""Everything a session needs to know about its service and its connection, resolved once
from the configuration by the driver (the session never reads the config itself)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pop3d import IMPLEMENTATION
from pop3d.auth.identity import IdentityRules
from pop3d.security.policy import Policy
from pop3d.security.value import TLSInfo


@dataclass(frozen=True, slots=True)
class SessionSettings:
    servername: str = "localhost"
    serverinfo: str = "on"  # off | min | on
    implementation: str = IMPLEMENTATION
    allow_apop: bool = False
    policy: Policy = field(default_factory=Policy)
    expire_seconds: int = -1  # popexpiretime; negative: EXPIRE NEVER
    min_poll_seconds: int = 0  # popminpoll
    poll_padding: int = 1  # poppollpadding
    line_limit: int = 8192
    bad_command_limit: int = 20
    failed_login_pause: float = 3.0
    plaintext_login_pause: float = 0.0
    readonly: bool = False  # refuse DELE
    mark_seen: bool = False  # popuseimapflags: RETR'd messages are marked seen at UPDATE
    sasl_mechanisms: tuple[str, ...] = ()  # enabled, strongest first
    sasl_line_limit: int = 65536  # longest AUTH continuation line, CRLF included
    proxy_authorizers: frozenset[str] = frozenset()  # admins + proxyservers
    oauth_scope: str = ""  # the scope bearer tokens must carry (oauth_scope)
    sasl_max_buffer: int = 65536  # the largest security-layer frame we accept
    keytab: str | None = None  # sasl_keytab: the Kerberos acceptor keytab
    require_channel_binding: bool = False  # sasl_gssapi_channel_binding: required
    identity: IdentityRules = field(default_factory=IdentityRules)
    # maxlogins_per_host / maxlogins_per_user set: every login asks ClaimLogin first
    limit_logins: bool = False
    server_aliases: tuple[str, ...] = ()  # servername_aliases (DIGEST-MD5's digest-uri)


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """Per-connection facts the driver supplies (randomness and the clock live there)."""

    session_id: str
    challenge_token: str  # "<random>.<unix time>", the APOP challenge minus host and brackets
    external_ssf: int = 0
    tls: TLSInfo | None = None  # set when TLS was negotiated before the greeting (pop3s)
    # KPOP (pop3d -k): the Kerberos principal the pre-greeting handshake proved, and the
    # local user it maps to; USER/PASS may then log in as that user only, without a password.
    kpop_principal: str | None = None
    kpop_user: str | None = None
    # The client's address (PROXY-aware; no port) and the address it connected to, as
    # text; None where there is none (stdio). For login limits and DIGEST-MD5.
    peer_host: str | None = None
    local_address: str | None = None
