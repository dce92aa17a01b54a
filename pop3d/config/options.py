"""Every imapd.conf option pop3d reads, declared once: name, type, default, one line of doc
(the model is Cyrus's ``lib/imapoptions``). The parser, ``check-config`` and the docs all
come from this table.

Options marked ``[pop3d]`` are this implementation's own; the rest keep Cyrus's meaning
(../shared/reference/cyrus-pop3d.md §3), with differences noted in the doc line.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from importlib import resources


class Kind(enum.Enum):
    SWITCH = "switch"
    INT = "int"
    DURATION = "duration"
    STRING = "string"
    ENUM = "enum"


@dataclass(frozen=True, slots=True)
class Option:
    name: str
    kind: Kind
    default: object
    doc: str
    choices: tuple[str, ...] = ()
    unit: str = "s"  # DURATION: the unit of a bare number
    minimum: int | None = None
    # DURATION: a negative value means something (popexpiretime's NEVER); elsewhere it is
    # an error (a negative poptimeout would end every session at once).
    negative: bool = False
    # STRING: names a file or folder, and must be absolute (see imapd.path_problem).
    path: bool = False


def _o(name: str, kind: Kind, default: object, doc: str, **extra: object) -> Option:
    return Option(name, kind, default, doc, **extra)  # type: ignore[arg-type]


S, N, D, T, E = Kind.SWITCH, Kind.INT, Kind.DURATION, Kind.STRING, Kind.ENUM

OPTIONS: dict[str, Option] = {
    option.name: option
    for option in (
        # --- identity, greeting -----------------------------------------------------------
        _o(
            "servername",
            T,
            None,
            "Host name in the greeting and APOP challenge (default: the system host name): "
            "printable ASCII without spaces, < or >, at most 128 characters.",
        ),
        _o(
            "serverinfo",
            E,
            "on",
            "How much the greeting and CAPA say about the server.",
            choices=("off", "min", "on"),
        ),
        _o(
            "configdirectory",
            T,
            None,
            "Cyrus state directory: per-user telemetry logs "
            "(log/<user>/), the credential file by default, shutdown files.",
            path=True,
        ),
        _o(
            "syslog_prefix",
            T,
            None,
            "Prefix of session ids (SESSIONID=<...> in the login's answer; default: "
            "servername) and of the syslog tag: printable ASCII without spaces, < or >, at "
            "most 128 characters (Cyrus cuts a session id's prefix there).",
        ),
        _o(
            "telemetry_bysessionid",
            S,
            False,
            "Name a telemetry log (<configdirectory>/log/<user>/) <service>-<session id> "
            "instead of <service>-<pid>-<session id> (pop3d adds the session id to Cyrus's "
            "<service>-<pid>: a worker serves many sessions).",
        ),
        _o(
            "telemetry_prelogin",
            S,
            False,
            "[pop3d] Telemetry logs also record the conversation before login (Cyrus starts "
            "at login), with every secret hidden as ****: PASS, the APOP digest, AUTH "
            "arguments, challenges and answers. Held in memory (64 KiB at most) and "
            "written only once the login succeeds.",
        ),
        # --- logs, audit trail, metrics -------------------------------------------------
        _o(
            "syslog_socket",
            T,
            None,
            "[pop3d] Also log to syslog through this unix socket (e.g. /dev/log): logins "
            "as Cyrus's login:/badlogin: lines, session ends as counts: lines (a name or "
            "reason a client chose escaped, and cut past 256 characters, 1,024 for a reason, "
            "with ...(+N) for the N left out: see pop3d(8)). Unset: "
            "stderr only. A socket that does not answer at start is exit 78; a daemon "
            "that goes away later is said on stderr (at most once a minute), tried again "
            "at every line, and the service goes on.",
            path=True,
        ),
        _o(
            "syslog_facility",
            E,
            "local6",
            "Syslog facility of every line (Cyrus's default is LOCAL6).",
            choices=("daemon", "mail", "news", "user", *(f"local{n}" for n in range(8))),
        ),
        _o(
            "audit_jsonl_file",
            T,
            None,
            "[pop3d] Also append every login attempt and session end to this file as one "
            "JSON object per line (created 0640; reopened when logrotate moves it). Only a "
            "regular file is written, never through a symbolic link: anything else at the "
            "path (a FIFO, a link) is one log line and the records are not written there; "
            "sessions go on.",
            path=True,
        ),
        _o(
            "prometheus_enabled",
            S,
            False,
            "Serve Prometheus metrics from pop3d-master at prometheus_listen (/metrics). A "
            "connection has 10 seconds in all, from accept to the end of the answer "
            "(Prometheus's own default scrape_timeout), and is then closed, whatever it sent.",
        ),
        _o(
            "prometheus_listen",
            T,
            "127.0.0.1:9110",
            "[pop3d] Address and port of the metrics endpoint: host:port, [v6]:port or a "
            "port alone (loopback). Nothing there asks for a password: keep it on "
            "loopback or a management network.",
        ),
        # --- storage ----------------------------------------------------------------------
        _o("partition-default", T, None, "Mail spool root; %p in maildir_path.", path=True),
        _o(
            "maildir_path",
            T,
            "%p/%u/Maildir",
            "[pop3d] Where a user's Maildir is: %u user, "
            "%n local part, %d domain, %p partition-default, %% a percent sign.",
        ),
        _o(
            "maildir_create",
            S,
            True,
            "[pop3d] Create a missing Maildir at first login or delivery.",
        ),
        _o(
            "maildrop_lock",
            E,
            "maildir",
            "[pop3d] How a session locks its maildrop: maildir (pop3d.lock in each Maildir, "
            "a descriptor per session; also across hosts sharing Maildirs over NFS) or "
            "table (<configdirectory>/lock/pop3d-maildrops/, no descriptor per session; one "
            "host, or hosts sharing configdirectory).",
            choices=("maildir", "table"),
        ),
        # --- authentication ---------------------------------------------------------------
        _o(
            "credentials_file",
            T,
            None,
            "[pop3d] The credential file (default "
            "<configdirectory>/pop3d.passwd); see pop3d/auth/credentials.py.",
            path=True,
        ),
        _o(
            "allowplaintext",
            S,
            False,
            "Allow USER/PASS and plaintext SASL on connections "
            "without TLS or an external layer of strength > 1 (TLS with a NULL cipher, "
            "strength 0, counts as no TLS).",
        ),
        _o(
            "allowapop",
            S,
            False,
            "Offer APOP (greeting challenge). Cyrus defaults to on; "
            "pop3d defaults to off because APOP needs a plaintext-equivalent secret.",
        ),
        _o(
            "allowanonymouslogin",
            S,
            False,
            "Has no effect here: anonymous POP logins are not offered (a warning if set to yes).",
        ),
        _o("failedloginpause", D, 3, "Pause after a failed login, for that session only."),
        _o(
            "plaintextloginpause",
            D,
            0,
            "Pause after a successful login over a connection without TLS.",
        ),
        _o(
            "username_tolower",
            S,
            True,
            "Fold user names to lower case, Kerberos principals' too for GSSAPI, GS2-KRB5 and "
            "GSS-SPNEGO (ALICE@REALM logs in as alice); say no where principals differ only "
            "in case. KPOP compares the principal's name exactly.",
        ),
        _o(
            "virtdomains",
            E,
            "off",
            "Virtual domains: user@domain names.",
            choices=("off", "userid", "on"),
        ),
        _o("defaultdomain", T, None, "With virtdomains, the domain that may be omitted."),
        _o(
            "argon2_memory",
            N,
            7168,
            "[pop3d] Argon2id memory in KiB for new password hashes.",
            minimum=8,
        ),
        _o("argon2_passes", N, 5, "[pop3d] Argon2id passes for new password hashes.", minimum=1),
        _o(
            "password_checks_waiting",
            N,
            128,
            "[pop3d] Password checks (Argon2, or a password checker) a worker lets wait; "
            "past it a login gets -ERR [SYS/TEMP] at once, so a flood of passwords costs a "
            "bounded queue. A check whose client is gone is dropped.",
            minimum=1,
        ),
        _o(
            "auth_cache_ttl",
            D,
            300,
            "[pop3d] Remember a successful password check this "
            "long (a keyed hash under a per-process key; 0 disables).",
        ),
        _o("admins", T, None, "Administrators, who may authorize as other users (SASL)."),
        _o("proxyservers", T, None, "Users who may proxy for others (SASL)."),
        _o("loginrealms", T, None, "Realms accepted in user@realm logins (SASL)."),
        _o(
            "sasl_mech_list",
            T,
            None,
            "SASL mechanisms to offer, space separated. Names "
            "this build does not offer yet are ignored with a warning, as in Cyrus.",
        ),
        _o(
            "sasl_keytab",
            T,
            None,
            "Keytab holding the pop/<servername> key for GSSAPI, GS2-KRB5 and GSS-SPNEGO "
            "(default: KRB5_KTNAME, else the system keytab). Setting it enables those "
            "mechanisms; it must be readable by pop3d and by nobody in its group or beyond.",
            path=True,
        ),
        _o(
            "sasl_gssapi_channel_binding",
            S,
            False,
            "[pop3d] Refuse GSSAPI logins over TLS that are not bound to the TLS channel "
            "(RFC 5929 tls-server-end-point); off: bindings are checked when sent.",
        ),
        _o("sasl_minimum_layer", N, 0, "Minimum security strength factor for AUTH.", minimum=0),
        _o("sasl_maximum_layer", N, 256, "Maximum SASL security layer.", minimum=0),
        _o(
            "scram_iterations",
            N,
            4096,
            "[pop3d] PBKDF2 iterations for new SCRAM keys (RFC 7677 asks for 4096 or more).",
            minimum=4096,
        ),
        _o(
            "server_secret_file",
            T,
            None,
            "[pop3d] 32 random bytes that key the SCRAM decoys for unknown users (default: "
            "pop3d.secret beside the credential file; made on first start).",
            path=True,
        ),
        _o(
            "sasl_line_max",
            N,
            65536,
            "[pop3d] Longest AUTH response line in octets, CRLF included.",
            minimum=1024,
        ),
        _o(
            "sasl_pwcheck_method",
            T,
            "auxprop",
            "How passwords are checked: auxprop (the credential file), saslauthd "
            "(Cyrus saslauthd at sasl_saslauthd_path) or kerberos5 (an initial ticket from "
            "the KDC, verified with sasl_keytab); the last two for USER/PASS, PLAIN and "
            "LOGIN only.",
        ),
        _o(
            "sasl_saslauthd_path",
            T,
            "/var/run/saslauthd/mux",
            "Path of saslauthd's socket (the socket itself, as in Cyrus).",
            path=True,
        ),
        # --- OAuth 2.0 bearer tokens (OAUTHBEARER, XOAUTH2) --------------------------------
        _o(
            "oauth_issuer",
            T,
            None,
            "[pop3d] Issuer (iss) of the JWT access tokens to accept; unset disables tokens.",
        ),
        _o(
            "oauth_audience",
            T,
            None,
            "[pop3d] Audience (aud) a token must name; required with oauth_issuer.",
        ),
        _o(
            "oauth_jwks_file",
            T,
            None,
            "[pop3d] Local JWKS file with the issuer's public keys (RSA, EC, Ed25519).",
            path=True,
        ),
        _o(
            "oauth_algorithms",
            T,
            "RS256 ES256 EdDSA",
            "[pop3d] JWS algorithms to accept, space separated; none and HS* are refused.",
        ),
        _o(
            "oauth_clock_skew",
            D,
            60,
            "[pop3d] Clock skew allowed when checking a token's exp, nbf and iat.",
        ),
        _o(
            "oauth_user_claim",
            T,
            "email",
            "[pop3d] The token claim that names the user (e.g. email, sub, preferred_username).",
        ),
        _o(
            "oauth_scope",
            T,
            None,
            "[pop3d] A scope every token must carry (scope or scp claim); unset: none required.",
        ),
        # --- POP3 -------------------------------------------------------------------------
        _o(
            "popexpiretime",
            D,
            -1,
            "CAPA EXPIRE: days messages may stay (negative: NEVER). A part of a day "
            "counts as a whole one (12h is EXPIRE 1; only 0 is EXPIRE 0, 'do not leave "
            "mail on the server'). Advertised only; pop3d never expires mail.",
            unit="d",
            negative=True,
        ),
        _o(
            "popminpoll",
            D,
            0,
            "LOGIN-DELAY: minimum time between logins of one user, enforced with [LOGIN-DELAY].",
            unit="m",
        ),
        _o(
            "poppollpadding",
            N,
            1,
            "Allow this many logins in a burst before popminpoll bites (Cyrus's soft minpoll).",
            minimum=1,
        ),
        _o(
            "poptimeout",
            D,
            600,
            "Idle timeout: time allowed to send a complete command, and to take any of "
            "an answer (a client that stops reading is timed out too). "
            "RFC 1939 asks for at least 10 minutes; Cyrus raises smaller values silently, "
            "pop3d uses them and warns.",
            unit="m",
            minimum=1,
        ),
        _o(
            "pop_line_max",
            N,
            8192,
            "[pop3d] Longest command line in octets, CRLF "
            "included; longer lines are refused whole, each pop_line_max octets of one "
            "counting as a bad command (pop_bad_commands_max).",
            minimum=64,
        ),
        _o(
            "pop_bad_commands_max",
            N,
            20,
            "[pop3d] Bad commands tolerated per session; the next one closes it.",
            minimum=0,
        ),
        _o(
            "popsubfolders",
            S,
            False,
            "A login as user+folder (user+folder@domain with virtdomains) is the user, "
            "with the user's credentials, limits and name in the logs, opening the "
            "Maildir++ folder .folder of the user's Maildir, which must exist (else -ERR "
            "[SYS/TEMP] Unable to open maildrop: Mailbox does not exist, as Cyrus); each "
            "folder has its own lock and UIDLs. user+ is the INBOX, as in Cyrus; a folder "
            "name with /, \\, :, a control character or an empty part (., .., .x) is an "
            "invalid user name. Without it, user+folder is an ordinary user name.",
        ),
        _o(
            "popuseacl",
            S,
            False,
            "Has no effect here: Maildir has no ACLs (a warning if set to yes).",
        ),
        _o(
            "popuseimapflags",
            S,
            False,
            "Obey and set Maildir flags: messages flagged T (trashed, IMAP \\Deleted) are "
            "not listed; messages retrieved whole by RETR are marked seen (S, moved from "
            "new/ to cur/) at QUIT.",
        ),
        _o(
            "uidl_format",
            E,
            "cyrus",
            "Has no effect here (a warning if set): UIDLs are the unique part of the Maildir "
            "file name, whatever the value.",
            choices=("uidonly", "cyrus", "dovecot", "courier"),
        ),
        _o("readonly", S, False, "Refuse DELE."),
        _o(
            "chatty",
            S,
            False,
            "Accepted for compatibility and ignored (a warning if set): Cyrus logs every "
            "I/O with it, passwords and AUTH exchanges included; pop3d logs logins and "
            "session ends, never secrets.",
        ),
        _o(
            "debug_command",
            T,
            None,
            "Command run by -D, a printf format Cyrus fills in with snprintf: %s is the "
            "program name, %d the process id, the second %s the service name, %% a percent "
            "sign (flags, width and precision as in C; a conversion that does not fit, or a "
            "fourth, is an error). Not run if longer than Cyrus's 1023 octets once filled in.",
        ),
        _o(
            "maxlogins_per_user",
            N,
            0,
            "Logged-in sessions one user may have at once on a service, across all its "
            "workers (0: no limit); one more is refused with -ERR [IN-USE].",
            minimum=0,
        ),
        _o(
            "maxlogins_per_host",
            N,
            0,
            "Logged-in sessions one client address may have at once on a service, across "
            "all its workers (0: no limit); one more is refused with -ERR [SYS/TEMP].",
            minimum=0,
        ),
        # --- running safely ---------------------------------------------------------------
        _o(
            "cyrus_user",
            T,
            None,
            "The account pop3d runs as when started as root: the master binds its sockets, "
            "then becomes this user before any worker starts. Unset, pop3d refuses to "
            "serve as root (see allow_root).",
        ),
        _o(
            "cyrus_group",
            T,
            None,
            "The group pop3d runs as with cyrus_user (default: that user's primary group); "
            "the user's supplementary groups are kept, as in Cyrus.",
        ),
        _o(
            "allow_root",
            S,
            False,
            "[pop3d] Serve as root when started as root without cyrus_user (not "
            "recommended; for test labs and containers that are their own sandbox).",
        ),
        _o(
            "servername_aliases",
            T,
            None,
            "[pop3d] Other host names of this server, space separated: a DIGEST-MD5 "
            "digest-uri may name any of them, servername, or the address the client "
            "connected to.",
        ),
        # --- TLS --------------------------------------------------------------------------
        _o(
            "allowstarttls",
            S,
            True,
            "Offer STLS when a certificate is configured (Cyrus 3.13 defaults to off).",
        ),
        _o("tls_required", S, False, "Refuse every login until TLS is active."),
        _o("tls_server_cert", T, None, "PEM certificate chain for pop3s and STLS.", path=True),
        _o(
            "tls_server_key",
            T,
            None,
            "PEM private key for tls_server_cert, not encrypted: pop3d never asks for a "
            "passphrase (an encrypted key is a configuration error, exit 78). Others may "
            "not read or write it (0600, or 0640 with a group such as Debian's ssl-cert); "
            "a key they may is refused, exit 78.",
            path=True,
        ),
        _o(
            "tls_client_ca_file", T, None, "PEM CA bundle to verify client certificates.", path=True
        ),
        _o(
            "tls_client_ca_dir",
            T,
            None,
            "Hashed CA directory (openssl rehash) to verify client certificates; it must hold "
            "at least one. Its CAs are not named in the request, as in Cyrus. A system-wide "
            "store (more than 50 CAs, or /etc/ssl/certs) is a warning: any of its CAs' "
            "certificates would log in with EXTERNAL.",
            path=True,
        ),
        _o(
            "tls_crl_file",
            T,
            None,
            "PEM file of certificate revocation lists, checked as Cyrus does for every "
            "certificate of a client's chain (CRL_CHECK and CRL_CHECK_ALL): it must hold a "
            "current CRL of each CA that issues client certificates or intermediates, or "
            "those certificates do not verify (an expired CRL fails them all: renew it, then "
            "SIGHUP re-reads it, as it does the certificate). A file that cannot be read or "
            "holds no CRL is a configuration error, exit 78 (Cyrus logs it and checks none); "
            "an expired CRL, or a CA of tls_client_ca_file without a current one, is a "
            "warning.",
            path=True,
        ),
        _o(
            "tls_client_certs",
            E,
            "off",
            "Ask for client certificates, naming the CAs of tls_client_ca_file (not "
            "tls_client_ca_dir's, as in Cyrus) in the request. optional: a client may send "
            "none, and one that does not verify (another CA's, expired, revoked) gives the "
            "session no identity: EXTERNAL is not offered, a password login is (Cyrus ends "
            "such a handshake). require: a handshake without a certificate that verifies fails.",
            choices=("off", "optional", "require"),
        ),
        _o(
            "tls_client_identity",
            E,
            "cn",
            "[pop3d] Which part of a verified client certificate names the user for SASL EXTERNAL.",
            choices=("cn", "email"),
        ),
        _o(
            "tls_versions",
            T,
            "tls1_2 tls1_3",
            "TLS versions to accept, space separated (tls1_0 to tls1_3); one not listed is "
            "off, between two listed ones too, as in Cyrus. The TLS settings are tried when "
            "read, a handshake in memory for each listed version against a client that offers "
            "everything OpenSSL can: versions the security level forbids (tls1_0 and tls1_1 "
            "unless tls_ciphers lowers it), ciphers it drops or the certificate's key cannot "
            "use, with which no handshake can complete, are a configuration error. A listed "
            "version no handshake can complete with while another can (tls_ciphers for an RSA "
            "key with an ECDSA certificate leaves tls1_2 nothing) is a warning naming it: a "
            "service for TLS 1.3 clients alone may be meant; list tls1_3 alone to say so.",
        ),
        _o("tls_ciphers", T, None, "OpenSSL cipher list for TLS 1.2."),
        _o("tls_prefer_server_ciphers", S, True, "Choose the cipher by the server's order."),
        _o(
            "tls_eccurve",
            T,
            None,
            "Groups for the (EC)DHE key exchange, TLS 1.3's included: one name as in Cyrus "
            "(prime256v1, secp384r1, X25519) or a colon-separated list, in order of "
            "preference. Unset: OpenSSL's own list (Cyrus's default is prime256v1 alone). "
            "A name OpenSSL does not know is a configuration error (Cyrus ignores it).",
        ),
        _o(
            "tls_server_dhparam",
            T,
            None,
            "PEM DH parameters for the DHE cipher suites of TLS 1.2 (e.g. openssl genpkey "
            "-genparam -algorithm DH -pkeyopt group:ffdhe3072). Unset, OpenSSL chooses a DHE "
            "suite only with a client offering an RFC 7919 group. Parameters below the "
            "security level (2048 bits by default) are a configuration error. Cyrus 3.13 "
            "deprecates this option and ignores it (OpenSSL chooses); pop3d uses it, with a "
            "warning saying so.",
            path=True,
        ),
        _o(
            "tls_session_timeout",
            D,
            1440 * 60,
            "How long a TLS session can be resumed (by ticket, or by session id; on the "
            "worker that issued it), at most 24 hours as in Cyrus; 0 turns resumption off.",
            unit="m",
        ),
        _o(
            "tls_handshake_timeout",
            D,
            30,
            "[pop3d] Time allowed for a TLS handshake.",
            minimum=1,
        ),
        _o(
            "kpop_handshake_timeout",
            D,
            30,
            "[pop3d] Time allowed for the KPOP (pop3d -k) Kerberos handshake, from connect to "
            "the greeting; the keytab is sasl_keytab's.",
            minimum=1,
        ),
        _o(
            "kerberos5_timeout",
            D,
            10,
            "[pop3d] Time a sasl_pwcheck_method: kerberos5 password check may take (KDC "
            "exchanges and verification); past it the login gets -ERR [SYS/TEMP].",
            minimum=1,
        ),
    )
}

# Cyrus POP3 options pop3d accepts but does not implement: setting one to anything but its
# no-op value is a warning (at its file:line, at start and in check-config) that names it and
# says it has no effect here, never silence. name -> (the no-op value or None: any setting
# warns, why it has no effect).
NO_EFFECT: dict[str, tuple[object, str]] = {
    "allowanonymouslogin": (False, "anonymous POP logins are not offered"),
    "popuseacl": (False, "Maildir has no ACLs"),
    "uidl_format": (
        None,
        "UIDLs are the unique part of the Maildir file name, whatever the value",
    ),
}

# Cyrus's older names of TLS options (lib/imapoptions: Deprecated-Since 2.5.0, Replaced-By):
# read as the newer name, with a warning, as Cyrus's libconfig reads them. They were
# accepted and ignored, so tls_cipher_list: NULL-SHA256 was silently not the cipher list,
# and tls_ca_file named no CA (found probing). old -> new.
RENAMED: dict[str, str] = {
    "tls_ca_file": "tls_client_ca_file",
    "tls_ca_path": "tls_client_ca_dir",
    "tls_cert_file": "tls_server_cert",
    "tls_cipher_list": "tls_ciphers",
    "tls_key_file": "tls_server_key",
}

# Options read once for the whole server, never for one service: the account pop3d-master
# becomes (and pop3d-admin with it), the metrics endpoint the master serves. A
# service-prefixed form (pop3s_cyrus_user) applies to nothing, and is said to.
SERVER_WIDE = frozenset(
    {"cyrus_user", "cyrus_group", "allow_root", "prometheus_enabled", "prometheus_listen"}
)

# Options the other Cyrus daemons read (every name declared in Cyrus's lib/imapoptions, plus
# older ones and libsasl pass-throughs). A site's imapd.conf is shared by all of them, so
# these are accepted without a warning and ignored.
_LEGACY_CYRUS_OPTIONS = frozenset(
    """
    newsspool sasl_auxprop_plugin sasl_sasldb_path sasl_auto_transition sasl_mech_list
    partition-default defaultpartition
    """.split()
)


def _cyrus_option_names() -> frozenset[str]:
    text = resources.files("pop3d.config").joinpath("cyrus_options.txt").read_text("utf-8")
    return frozenset(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )


OTHER_CYRUS_OPTIONS = _cyrus_option_names() | _LEGACY_CYRUS_OPTIONS
