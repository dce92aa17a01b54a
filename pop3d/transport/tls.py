"""Server-side TLS contexts from imapd.conf (``tls_*`` options, Cyrus names).

Defaults follow RFC 8314 and current practice: TLS 1.2 and 1.3 only, server cipher order,
no compression, no renegotiation, ALPN "pop3" (RFC 8314 §7 does not name one for POP3;
Cyrus advertises "pop3" and so do we). The context is built once per worker and swapped on
SIGHUP, so a renewed certificate takes effect without dropping sessions.

What a handshake yields for the layers above (:func:`facts`):

* the SSF: the cipher's secret bits, as Cyrus counts it;
* the client's identity when ``tls_client_certs`` asked for a certificate and it verified:
  the subject CN, or with ``tls_client_identity: email`` the first email SAN (SASL
  EXTERNAL uses it);
* channel bindings (RFC 5056): ``tls-server-end-point`` (RFC 5929 §4.1, a hash of our own
  certificate, valid on every TLS version) and ``tls-unique`` on TLS 1.2 only (RFC 9266 §3
  forbids it on 1.3). ``tls-exporter`` (RFC 9266) needs SSL_export_keying_material, which
  Python's ssl module does not expose: see SECURITY.md.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from pop3d.config.imapd import Config
from pop3d.security.value import TLSInfo

_VERSIONS = {
    "tls1_0": ssl.TLSVersion.TLSv1,
    "tls1_1": ssl.TLSVersion.TLSv1_1,
    "tls1_2": ssl.TLSVersion.TLSv1_2,
    "tls1_3": ssl.TLSVersion.TLSv1_3,
}


# OpenSSL's default session and ticket lifetime (SSL_CTX_get_timeout), in seconds.
OPENSSL_SESSION_LIFETIME = 7200


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """A server context and what we know about our own certificate."""

    context: ssl.SSLContext
    end_point_binding: bytes  # tls-server-end-point
    client_identity_from: str = "cn"  # or "email"


def end_point_binding(certificate_pem: bytes) -> bytes:
    """RFC 5929 §4.1: the certificate hashed with its signature's hash, MD5 and SHA-1
    upgraded to SHA-256."""
    certificate = x509.load_pem_x509_certificate(certificate_pem)
    algorithm = certificate.signature_hash_algorithm
    if algorithm is None or isinstance(algorithm, hashes.MD5 | hashes.SHA1):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(certificate.public_bytes(serialization.Encoding.DER))
    return digest.finalize()


def certificate_configured(config: Config, service: str | None) -> bool:
    cert = config.string("tls_server_cert", service)
    key = config.string("tls_server_key", service)
    return bool(cert and key and cert != "disabled" and key != "disabled")


def server_tls(config: Config, service: str | None) -> ServerTLS:
    """The context and our certificate's facts. Raises :class:`ConfigError` (with
    file:line) when the settings cannot work."""
    context = server_context(config, service)
    cert = str(config.string("tls_server_cert", service))
    try:
        with open(cert, "rb") as handle:
            binding = end_point_binding(handle.read())
    except (OSError, ValueError) as exc:
        raise config.error("tls_server_cert", service, f"cannot read {cert}: {exc}") from None
    identity = config.string("tls_client_identity", service) or "cn"
    return ServerTLS(context, binding, identity)


def server_context(config: Config, service: str | None) -> ssl.SSLContext:
    """Raises :class:`ConfigError` (with file:line) when the settings cannot work."""
    cert = config.string("tls_server_cert", service)
    key = config.string("tls_server_key", service)
    if not certificate_configured(config, service):
        raise config.error(
            "tls_server_cert", service, "TLS needs tls_server_cert and tls_server_key"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    versions_text = config.string("tls_versions", service) or ""
    versions = []
    for word in versions_text.split():
        if word not in _VERSIONS:
            raise config.error(
                "tls_versions",
                service,
                f"tls_versions: unknown version {word!r} (tls1_2, tls1_3, ...)",
            )
        versions.append(_VERSIONS[word])
    if not versions:
        raise config.error("tls_versions", service, "tls_versions names no version")
    context.minimum_version = min(versions)
    context.maximum_version = max(versions)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if config.switch("tls_prefer_server_ciphers", service):
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    ciphers = config.string("tls_ciphers", service)
    try:
        if ciphers:
            context.set_ciphers(ciphers)
    except ssl.SSLError:
        raise config.error(
            "tls_ciphers", service, f"tls_ciphers: OpenSSL accepts none of {ciphers!r}"
        ) from None
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise config.error(
            "tls_server_cert",
            service,
            f"cannot load certificate {cert} / key {key}: {reason}",
        ) from None
    context.set_alpn_protocols(["pop3"])
    mode = config.string("tls_client_certs", service) or "off"
    if mode != "off":
        ca_file = config.string("tls_client_ca_file", service)
        ca_dir = config.string("tls_client_ca_dir", service)
        if not ca_file and not ca_dir:
            raise config.error(
                "tls_client_certs",
                service,
                "tls_client_certs needs tls_client_ca_file or tls_client_ca_dir",
            )
        try:
            context.load_verify_locations(cafile=ca_file, capath=ca_dir)
        except (OSError, ssl.SSLError) as exc:
            raise config.error(
                "tls_client_ca_file", service, f"cannot load client CAs: {exc}"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED if mode == "require" else ssl.CERT_OPTIONAL
    if config.integer("tls_session_timeout", service) < OPENSSL_SESSION_LIFETIME:
        # Python's ssl cannot shorten OpenSSL's lifetime (no SSL_CTX_set_timeout), so the
        # only way to keep resumed sessions within the setting is no tickets at all. That
        # ends resumption in TLS 1.3; TLS 1.2 can still resume by session id from OpenSSL's
        # in-process cache, which Python cannot turn off (SECURITY.md, known limits).
        context.options |= ssl.OP_NO_TICKET
        context.num_tickets = 0
    return context


def facts(ssl_object: ssl.SSLObject | ssl.SSLSocket, server: ServerTLS) -> TLSInfo:
    cipher = ssl_object.cipher()
    name, version, bits = cipher if cipher else ("", "", 0)
    tls_version = ssl_object.version() or version
    bindings = {"tls-server-end-point": server.end_point_binding}
    if tls_version in ("TLSv1.2", "TLSv1.1", "TLSv1"):
        unique = ssl_object.get_channel_binding("tls-unique")
        if unique:
            bindings["tls-unique"] = unique
    return TLSInfo(
        version=tls_version,
        cipher=name,
        ssf=bits or 0,
        client_identity=client_identity(ssl_object, server.client_identity_from),
        channel_bindings=tuple(bindings.items()),
    )


def client_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket, source: str) -> str | None:
    """The verified client certificate's CN or email SAN; None without one. getpeercert()
    returns a parsed certificate only after verification succeeded, so an unverified
    certificate never yields an identity."""
    certificate = ssl_object.getpeercert()
    if not certificate:
        return None
    if source == "email":
        return _first(certificate.get("subjectAltName", ()), "email")
    for rdn in _tuple(certificate.get("subject", ())):
        found = _first(rdn, "commonName")
        if found is not None:
            return found
    return None


def _tuple(value: object) -> tuple[object, ...]:
    return value if isinstance(value, tuple) else ()


def _first(pairs: object, key: str) -> str | None:
    """The value of the first (key, value) pair in getpeercert()'s nested tuples."""
    for pair in _tuple(pairs):
        if isinstance(pair, tuple) and len(pair) == 2 and pair[0] == key:
            return str(pair[1])
    return None
