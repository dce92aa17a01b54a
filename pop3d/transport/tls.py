"""Server-side TLS contexts from imapd.conf (``tls_*`` options, Cyrus names).

Defaults follow RFC 8314 and current practice: TLS 1.2 and 1.3 only, server cipher order,
no compression, no renegotiation, ALPN "pop3" (RFC 8314 §7 does not name one for POP3;
Cyrus advertises "pop3" and so do we). The context is built once per worker and swapped on
SIGHUP, so a renewed certificate takes effect without dropping sessions.

The context is pyOpenSSL's (``OpenSSL.SSL.Context``), not Python's ``ssl``: only pyOpenSSL
exposes ``SSL_export_keying_material`` (the ``tls-exporter`` binding) and
``SSL_CTX_set_timeout`` (``tls_session_timeout``). The TLS layer that runs it is
``transport/tls_layer.py``.

What a handshake yields for the layers above (:func:`facts`):

* the SSF: the cipher's secret bits, as Cyrus counts it;
* the client's identity when ``tls_client_certs`` asked for a certificate and it verified:
  the subject CN, or with ``tls_client_identity: email`` the first email SAN (SASL
  EXTERNAL uses it);
* channel bindings (RFC 5056): ``tls-server-end-point`` (RFC 5929 §4.1, a hash of our own
  certificate, valid on every TLS version), ``tls-exporter`` on TLS 1.3 (RFC 9266: 32
  bytes exported under the label "EXPORTER-Channel-Binding", no context) and
  ``tls-unique`` on TLS 1.2 only (RFC 9266 §3 forbids it on 1.3), and only with the
  extended master secret (RFC 7627).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from warnings import catch_warnings, simplefilter

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.utils import CryptographyDeprecationWarning
from OpenSSL import SSL, crypto

# pyOpenSSL's cffi binding, for the calls it has no public method for
# (SSL_session_reused, SSL_get_verify_result, SSL_get_extms_support, the subject's CN), or
# only a deprecated one (the passphrase callback).
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from pop3d.config.imapd import Config, Problem
from pop3d.security.value import TLSInfo

_VERSIONS = {
    "tls1_0": SSL.TLS1_VERSION,
    "tls1_1": SSL.TLS1_1_VERSION,
    "tls1_2": SSL.TLS1_2_VERSION,
    "tls1_3": SSL.TLS1_3_VERSION,
}

_VERSION_OFF = {
    SSL.TLS1_VERSION: SSL.OP_NO_TLSv1,
    SSL.TLS1_1_VERSION: SSL.OP_NO_TLSv1_1,
    SSL.TLS1_2_VERSION: SSL.OP_NO_TLSv1_2,
    SSL.TLS1_3_VERSION: SSL.OP_NO_TLSv1_3,
}

# Python's ssl default for TLS 1.2 (what pop3d offered before pyOpenSSL, so the cipher a
# client gets does not change): forward secrecy and AEAD first, nothing anonymous or SHA-1.
DEFAULT_CIPHERS = (
    "@SECLEVEL=2:ECDH+AESGCM:ECDH+CHACHA20:ECDH+AES:DHE+AES:!aNULL:!eNULL:!aDSS:!SHA1:!AESCCM"
)

# Cyrus caps tls_session_timeout at 24 hours (tls.c: "maximum value is 1440 minutes").
MAX_SESSION_LIFETIME = 1440 * 60

# What a certificate's key can be (pyOpenSSL's Context.use_privatekey takes these).
_PrivateKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | dsa.DSAPrivateKey
)
_PRIVATE_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)
# OpenSSL asks for the passphrase of a PEM block marked encrypted on /dev/tty unless the
# context has a callback; this one has none to give. The key is never OpenSSL's to read
# (_private_key), but the certificate chain file is, and a block in it can say it is
# encrypted: check-config, a master's start or SIGHUP, a worker's reload waited on a
# terminal for a passphrase.
_NO_PASSPHRASE = _ffi.callback("int (*)(char *, int, int, void *)", lambda *_: -1)

# tls_client_certs: optional: a client certificate that does not verify leaves the
# handshake going (SSL_get_verify_result keeps why); see _ask_for_client_certificates.
_GO_ON_UNVERIFIED = _ffi.callback("int (*)(int, X509_STORE_CTX *)", lambda _ok, _store: 1)

# A PEM key or CRL file is a few KiB (a CRL of a large CA a few MiB); /dev/zero is none.
_MAX_FILE = 64 << 20

_CRL_BLOCK = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)

EXPORTER_LABEL = b"EXPORTER-Channel-Binding"  # RFC 9266 §2
EXPORTER_LENGTH = 32


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """A server context and what we know about our own certificate."""

    context: SSL.Context
    end_point_binding: bytes  # tls-server-end-point
    client_identity_from: str = "cn"  # or "email"
    # What works but may not be meant, said where the settings are checked (the master's
    # start and reload, check-config, a pop3d started without the master)
    warnings: tuple[Problem, ...] = ()


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
    warnings: list[Problem] = []
    context = server_context(config, service, warnings)
    cert = str(config.string("tls_server_cert", service))
    try:
        with open(cert, "rb") as handle:
            binding = end_point_binding(handle.read())
    except (OSError, ValueError) as exc:
        raise config.error("tls_server_cert", service, f"cannot read {cert}: {exc}") from None
    identity = config.string("tls_client_identity", service) or "cn"
    return ServerTLS(context, binding, identity, tuple(warnings))


def openssl_reason(exc: SSL.Error) -> str:
    """The reason strings of a pyOpenSSL error ("wrong version number"), not its repr."""
    details = exc.args[0] if exc.args else None
    if isinstance(details, list):
        reasons = [str(entry[-1]) for entry in details if isinstance(entry, tuple) and entry]
        if reasons:
            return "; ".join(reasons)
        # An empty queue: e.g. a write on a connection that already failed
        return "OpenSSL gave no reason"
    return str(exc) or exc.__class__.__name__


def server_context(
    config: Config, service: str | None, warnings: list[Problem] | None = None
) -> SSL.Context:
    """Raises :class:`ConfigError` (with file:line) when the settings cannot work; adds to
    ``warnings`` what works but may not be meant."""
    if warnings is None:
        warnings = []
    cert = config.string("tls_server_cert", service)
    key = config.string("tls_server_key", service)
    if not certificate_configured(config, service):
        raise config.error(
            "tls_server_cert", service, "TLS needs tls_server_cert and tls_server_key"
        )
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    _lib.SSL_CTX_set_default_passwd_cb(context._context, _NO_PASSPHRASE)
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
    context.set_min_proto_version(min(versions))
    context.set_max_proto_version(max(versions))
    # OP_ALL: OpenSSL's interoperability work-arounds, as Python's ssl sets them.
    options = SSL.OP_ALL | SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION
    # A version between two listed ones is off too, as in Cyrus (an SSL_OP_NO_* for each
    # version not listed): tls1_1 tls1_3 negotiated TLS 1.2 with a TLS 1.2 client (found
    # probing). OpenSSL then offers the versions on each side of the gap.
    for version, option in _VERSION_OFF.items():
        if version not in versions:
            options |= option
    if config.switch("tls_prefer_server_ciphers", service):
        options |= SSL.OP_CIPHER_SERVER_PREFERENCE
    # Give an idle connection's record buffers back (Python's ssl does the same): an idle
    # TLS connection then costs a few KiB, not two 16 KiB buffers.
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ciphers = config.string("tls_ciphers", service)
    try:
        context.set_cipher_list((ciphers or DEFAULT_CIPHERS).encode("ascii"))
    except (SSL.Error, UnicodeEncodeError):
        raise config.error(
            "tls_ciphers", service, f"tls_ciphers: OpenSSL accepts none of {ciphers!r}"
        ) from None
    _read_regular(config, service, "tls_server_cert", str(cert))
    private_key = _private_key(config, service, str(key))
    try:
        context.use_certificate_chain_file(str(cert))
        context.use_privatekey(private_key)
        context.check_privatekey()
    except SSL.Error as exc:
        raise config.error(
            "tls_server_cert",
            service,
            f"cannot load certificate {cert} / key {key}: {openssl_reason(exc)}",
        ) from None
    _key_exchange(context, config, service, warnings)
    context.set_alpn_select_callback(_select_alpn)
    mode = config.string("tls_client_certs", service) or "off"
    if mode != "off":
        _ask_for_client_certificates(context, config, service, warnings, require=mode == "require")
    crl_file = config.string("tls_crl_file", service)
    if crl_file:
        crls = _load_crls(context, config, service, crl_file)
        warnings += _crls_not_current(config, service, crl_file, crls)
    # Sessions resume (by ticket, or by id from this worker's cache) for at most
    # tls_session_timeout, as Cyrus does; 0 turns resumption off. The session id context
    # names this server to OpenSSL's cache: without one, OpenSSL refuses to resume a
    # session that had a client certificate.
    lifetime = min(config.integer("tls_session_timeout", service), MAX_SESSION_LIFETIME)
    context.set_session_id(b"pop3d")
    if lifetime > 0:
        context.set_timeout(lifetime)
    else:
        options |= SSL.OP_NO_TICKET
        context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    context.set_options(options)
    _check_a_handshake_completes(context, config, service, warnings)
    return context


def _read_regular(
    config: Config, service: str | None, option: str, path: str, *, secret: bool = False
) -> bytes:
    """The file's bytes (at most :data:`_MAX_FILE`), or :class:`ConfigError` naming it.
    A ``secret`` others may read or write is refused, as the credential file and the keytab
    are (found probing: a key of mode 0644 was taken); its group may read it, for Debian's
    ssl-cert group (0640 root:ssl-cert), whose members are the services meant to."""
    # OpenSSL's own words for a file it cannot open are "system lib", twice
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise config.error(option, service, f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise config.error(option, service, f"cannot read {path!r}: NUL in the name") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            # OpenSSL would wait on a FIFO for ever: check-config, the master's start, a
            # worker's SIGHUP all hung (found probing)
            raise config.error(option, service, f"{path} is not a regular file")
        if secret and mode & (stat.S_IROTH | stat.S_IWOTH):
            raise config.error(
                option,
                service,
                f"{path}: mode {stat.S_IMODE(mode):04o} lets others read or write it; "
                "refusing to use it (chmod o-rw: 0600, or 0640 with a group such as ssl-cert)",
            )
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(_MAX_FILE + 1)
    except OSError as exc:
        raise config.error(option, service, f"cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > _MAX_FILE:
        raise config.error(option, service, f"{path} is larger than {_MAX_FILE >> 20} MiB")
    return data


def _private_key(config: Config, service: str | None, path: str) -> _PrivateKey:
    """tls_server_key, decoded by cryptography, never by OpenSSL: OpenSSL asks for the
    passphrase of an encrypted key on /dev/tty, so a master started from a terminal
    blocked at its start or its SIGHUP check, a worker's SIGHUP blocked its event loop,
    and check-config waited, or took a typed passphrase and said OK for a key the
    service could not load (found probing). cryptography is given no passphrase and
    says the key is encrypted."""
    data = _read_regular(config, service, "tls_server_key", path, secret=True)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise config.error(
            "tls_server_key",
            service,
            f"{path}: the key is encrypted; pop3d cannot read a passphrase (store it "
            "decrypted, e.g. openssl pkey -in KEY -out NEW, readable by pop3d alone)",
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise config.error("tls_server_key", service, f"cannot load key {path}: {exc}") from None
    if not isinstance(key, _PRIVATE_KEY_TYPES):
        kind = type(key).__name__
        raise config.error("tls_server_key", service, f"{path}: {kind} is no certificate's key")
    return key


def _key_exchange(
    context: SSL.Context, config: Config, service: str | None, warnings: list[Problem]
) -> None:
    """tls_eccurve and tls_server_dhparam, which were accepted and ignored (found probing).

    tls_eccurve: the (EC)DHE groups, as Cyrus sets them (SSL_CTX_set1_curves, which
    limits TLS 1.3's key shares too); a name OpenSSL does not know is an error here,
    where Cyrus quietly keeps OpenSSL's list. tls_server_dhparam: DH parameters for TLS
    1.2's DHE suites. Cyrus 3.13 ignores it and calls SSL_CTX_set_dh_auto, which
    pyOpenSSL's binding lacks; without parameters OpenSSL chooses a DHE suite only with a
    client offering an RFC 7919 group."""
    groups = config.string("tls_eccurve", service)
    if groups:
        try:
            accepted = _lib.SSL_CTX_set1_curves_list(context._context, groups.encode("ascii"))
        except UnicodeEncodeError:
            accepted = 0
        if accepted != 1:
            _lib.ERR_clear_error()
            message = f"tls_eccurve: OpenSSL knows no group {groups!r} (e.g. X25519, secp384r1)"
            raise config.error("tls_eccurve", service, message)
    parameters = config.string("tls_server_dhparam", service)
    if parameters:
        _read_regular(config, service, "tls_server_dhparam", parameters)
        try:
            context.load_tmp_dh(parameters)
        except SSL.Error as exc:
            message = f"cannot use DH parameters {parameters}: {openssl_reason(exc)}"
            raise config.error("tls_server_dhparam", service, message) from None
        # Honoured here; a Cyrus daemon reading the same imapd.conf does not
        message = (
            "tls_server_dhparam is deprecated in Cyrus 3.13, whose daemons ignore it (OpenSSL "
            "chooses their DH parameters); pop3d uses these"
        )
        warnings.append(_warning(config, "tls_server_dhparam", service, message))


def _ask_for_client_certificates(
    context: SSL.Context,
    config: Config,
    service: str | None,
    warnings: list[Problem],
    *,
    require: bool,
) -> None:
    """Verify client certificates against tls_client_ca_file and tls_client_ca_dir, and
    name the CAs of tls_client_ca_file in the CertificateRequest, as Cyrus does
    (SSL_CTX_set_client_CA_list(SSL_load_client_CA_file(...))). None were named: a client
    holding several certificates could not choose, and one that sent another CA's had its
    handshake aborted (found probing). The directory's are not named, as in Cyrus: with
    Debian's /etc/ssl/certs the request named 144 public CAs, some 15 KB each handshake
    (found by a re-probe).

    ``require``: a handshake without a certificate that verifies fails, as in Cyrus.
    ``optional``: one whose certificate does not verify (another CA's, expired, revoked)
    goes on without a client identity, so a password login is still possible and
    EXTERNAL is not. Cyrus's verify callback returns OpenSSL's verdict, which aborts such
    a handshake with optional too; asking for a certificate the client may decline and
    then refusing the one it sends would make certificates anything but optional."""
    ca_file = config.string("tls_client_ca_file", service)
    ca_dir = config.string("tls_client_ca_dir", service)
    if not ca_file and not ca_dir:
        raise config.error(
            "tls_client_certs",
            service,
            "tls_client_certs needs tls_client_ca_file or tls_client_ca_dir",
        )
    authorities: dict[bytes, x509.Certificate] = {}  # by DER subject, as OpenSSL dedupes
    if ca_file:
        data = _read_regular(config, service, "tls_client_ca_file", ca_file)
        # cryptography warns of what it will refuse one day (a serial number that is not
        # positive), raw on standard error or as a log line of its own words; OpenSSL
        # verifies with such a CA, and the site is told one thing it can act on
        with catch_warnings(record=True) as caught:
            simplefilter("always", CryptographyDeprecationWarning)
            try:
                found = x509.load_pem_x509_certificates(data)
            except ValueError:
                message = f"{ca_file} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
                raise config.error("tls_client_ca_file", service, message) from None
        if any(issubclass(w.category, CryptographyDeprecationWarning) for w in caught):
            message = (
                f"{ca_file}: a CA certificate breaks RFC 5280 (e.g. a serial number that is "
                "not positive); OpenSSL verifies with it, a later pop3d may refuse it"
            )
            warnings.append(_warning(config, "tls_client_ca_file", service, message))
        authorities.update((c.subject.public_bytes(), c) for c in found)
    if ca_dir:
        count = _hashed_directory(config, service, ca_dir)
        if count > _SYSTEM_STORE or os.path.realpath(ca_dir) in _SYSTEM_STORES:
            message = (
                f"{ca_dir} holds {count} CA certificates, a system-wide store: a client "
                "certificate any of them issues verifies, and its name logs in with "
                "EXTERNAL; put the CAs that issue your users' certificates in a file or "
                "folder of their own"
            )
            warnings.append(_warning(config, "tls_client_ca_dir", service, message))
    try:
        context.load_verify_locations(ca_file or None, ca_dir or None)
    except SSL.Error as exc:
        raise config.error(
            "tls_client_ca_file" if ca_file else "tls_client_ca_dir",
            service,
            f"cannot load client CAs: {openssl_reason(exc)}",
        ) from None
    for certificate in authorities.values():
        context.add_client_ca(certificate)
    if require:
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
    else:
        # Not pyOpenSSL's set_verify with a callback: its wrapper resets the error of a
        # certificate the callback accepts to X509_V_OK, and SSL_get_verify_result (which
        # client_identity reads, here and from a resumed session) would then vouch for
        # it. This one leaves OpenSSL's verdict in place.
        _lib.SSL_CTX_set_verify(context._context, SSL.VERIFY_PEER, _GO_ON_UNVERIFIED)


# A hashed CA directory's names: 8 hex digits (the subject's hash), a dot, a number.
_HASHED_NAME = re.compile(r"[0-9a-f]{8}\.[0-9]+")
_CERTIFICATE_BLOCK = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)
# tls_client_ca_dir holding more CAs than a site issues client certificates from, or one
# of the distributions' stores of public CAs (Debian's holds 144)
_SYSTEM_STORE = 50
_SYSTEM_STORES = frozenset(
    {"/etc/ssl/certs", "/etc/pki/tls/certs", "/etc/pki/ca-trust/extracted/pem/directory-hash"}
)


def _hashed_directory(config: Config, service: str | None, folder: str) -> int:
    """How many certificates OpenSSL can find in a hashed directory (c_rehash, openssl
    rehash): those under a hashed name, read by OpenSSL (cryptography warned of some of
    Debian's public CAs, found by a re-probe). A directory that is missing or holds none
    is an error: no client certificate could verify (found probing: a missing one checked
    clean)."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        message = f"cannot read {folder}: {exc.strerror or exc}"
        raise config.error("tls_client_ca_dir", service, message) from None
    found = 0
    for name in names:
        if not _HASHED_NAME.fullmatch(name):
            continue
        try:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue  # a dangling link: OpenSSL finds nothing there either
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            with os.fdopen(os.dup(fd), "rb") as handle:
                data = handle.read(_MAX_FILE)
        finally:
            os.close(fd)
        for block in _CERTIFICATE_BLOCK.findall(data):
            with contextlib.suppress(crypto.Error):  # OpenSSL's lookup skips it too
                crypto.load_certificate(crypto.FILETYPE_PEM, block)
                found += 1
    if not found:
        raise config.error(
            "tls_client_ca_dir",
            service,
            f"{folder} holds no PEM certificate under a hashed name (run openssl rehash {folder})",
        )
    return found


def _load_crls(
    context: SSL.Context, config: Config, service: str | None, path: str
) -> list[x509.CertificateRevocationList]:
    """Every PEM CRL in ``path`` into the context's store, checked for each certificate of
    a client's chain, as Cyrus's tls.c does (X509_STORE_add_crl for each,
    X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL). The option was read and ignored: a
    revoked client certificate logged in with EXTERNAL (found probing). Unlike Cyrus, which
    logs a CRL file it cannot open and then checks nothing, a file that cannot be read or
    holds no CRL is a configuration error: a site that revokes certificates must not lose
    the revocations to a typo."""
    data = _read_regular(config, service, "tls_crl_file", path)
    blocks = _CRL_BLOCK.findall(data)
    if not blocks:
        message = f"{path} holds no PEM CRL (-----BEGIN X509 CRL-----)"
        raise config.error("tls_crl_file", service, message)
    store = context.get_cert_store()
    assert store is not None  # a new context has one
    crls = []
    for number, block in enumerate(blocks, 1):
        try:
            crl = x509.load_pem_x509_crl(block)
        except ValueError as exc:
            message = f"{path}: CRL {number} of {len(blocks)} cannot be read: {exc}"
            raise config.error("tls_crl_file", service, message) from None
        store.add_crl(crl)
        crls.append(crl)
    store.set_flags(crypto.X509StoreFlags.CRL_CHECK | crypto.X509StoreFlags.CRL_CHECK_ALL)
    return crls


def _crls_not_current(
    config: Config,
    service: str | None,
    path: str,
    crls: list[x509.CertificateRevocationList],
) -> list[Problem]:
    """Warnings for what makes every client certificate fail with the CRLs read, which
    checked clean (found re-probing): a CRL past its next update ("CRL has expired"), and a
    CA of tls_client_ca_file that no current CRL in the file is issued and signed by
    (CRL_CHECK_ALL wants one for each CA of a chain: "unable to get certificate CRL").
    Warnings, as Cyrus accepts both; a renewed file is read at SIGHUP."""
    now = datetime.now(UTC)
    warnings = []
    current = []
    for crl in crls:
        due = crl.next_update_utc
        if due is not None and due < now:
            message = (
                f"{path}: the CRL of {crl.issuer.rfc4514_string()} expired at "
                f"{due:%Y-%m-%d %H:%M} UTC: every certificate it covers fails until it is "
                "renewed (then SIGHUP)"
            )
            warnings.append(_warning(config, "tls_crl_file", service, message))
        else:
            current.append(crl)
    ca_file = config.string("tls_client_ca_file", service)
    if not ca_file:
        return warnings
    try:
        with catch_warnings():
            simplefilter("ignore", CryptographyDeprecationWarning)  # said when it was read
            authorities = x509.load_pem_x509_certificates(
                _read_regular(config, service, "tls_client_ca_file", ca_file)
            )
    except ValueError:
        return warnings  # refused where the CAs are read
    for ca in authorities:
        if not any(crl.issuer == ca.subject and _signed_by(crl, ca) for crl in current):
            message = (
                f"{path} holds no current CRL of the CA {ca.subject.rfc4514_string()} "
                f"(tls_client_ca_file): a certificate it issues fails ('unable to get "
                "certificate CRL'), as every CA of a chain needs one"
            )
            warnings.append(_warning(config, "tls_crl_file", service, message))
    return warnings


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError, UnsupportedAlgorithm):
        return False


# Every group a client could offer: the check's client takes those this OpenSSL knows
# (_client_groups). tls_eccurve limits what the server accepts; a client limited the same
# way offered no TLS 1.2 curve of an ECDSA certificate on another curve, and settings real
# clients complete with were refused (found probing: secp384r1 with a P-256 certificate).
_GROUP_NAMES = (
    "X25519", "P-256", "P-384", "P-521", "X448", "brainpoolP256r1", "brainpoolP384r1",
    "brainpoolP512r1", "brainpoolP256r1tls13", "brainpoolP384r1tls13", "brainpoolP512r1tls13",
    "ffdhe2048", "ffdhe3072", "ffdhe4096", "ffdhe6144", "ffdhe8192", "X25519MLKEM768",
    "SecP256r1MLKEM768", "SecP384r1MLKEM1024", "MLKEM512", "MLKEM768", "MLKEM1024",
    "secp256k1", "secp224r1", "secp192r1",
)  # fmt: skip
_VERSION_NAMES = {value: name for name, value in _VERSIONS.items()}


def _client_groups() -> bytes:
    probe = SSL.Context(SSL.TLS_CLIENT_METHOD)
    known = []
    for name in _GROUP_NAMES:
        if _lib.SSL_CTX_set1_curves_list(probe._context, name.encode("ascii")) == 1:
            known.append(name)
        _lib.ERR_clear_error()
    return ":".join(known).encode("ascii")


_CLIENT_GROUPS = _client_groups()


def _enabled_versions(config: Config, service: str | None) -> list[int]:
    """The versions server_context left on (it has refused any other word)."""
    words = (config.string("tls_versions", service) or "").split()
    return sorted({_VERSIONS[word] for word in words})


def _handshake_problem(context: SSL.Context, version: int) -> str | None:
    """Why a handshake in memory of ``version`` fails against a client that accepts
    anything OpenSSL can do (every cipher and group it knows, security level 0, no
    certificate check), or None when it completes. The client is never shaped by the
    server's settings: the question is whether any client can connect."""
    client_context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_context.set_cipher_list(b"ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    client_context.set_tls13_ciphersuites(
        b"TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256:"
        b"TLS_AES_128_CCM_SHA256:TLS_AES_128_CCM_8_SHA256"
    )
    client_context.set_min_proto_version(version)
    client_context.set_max_proto_version(version)
    _lib.SSL_CTX_set1_curves_list(client_context._context, _CLIENT_GROUPS)
    server = SSL.Connection(context, None)
    server.set_accept_state()
    server.set_verify(SSL.VERIFY_NONE)  # whether clients have certificates is theirs
    client = SSL.Connection(client_context, None)
    client.set_connect_state()
    failure: SSL.Error | None = None
    done: set[SSL.Connection] = set()
    for _ in range(8):  # a full handshake is 2 to 4 flights; a HelloRetryRequest adds one
        for one, other in ((client, server), (server, client)):
            try:
                one.do_handshake()
                done.add(one)
            except SSL.WantReadError:
                pass
            except SSL.Error as exc:
                failure = failure or exc
            with contextlib.suppress(SSL.WantReadError):
                other.bio_write(one.bio_read(1 << 16))
        if failure is not None or len(done) == 2:
            break
    if failure is None and len(done) == 2:
        return None
    return openssl_reason(failure) if failure is not None else "the handshake did not end"


def _check_a_handshake_completes(
    context: SSL.Context, config: Config, service: str | None, warnings: list[Problem]
) -> None:
    """A handshake in memory for each version the server enables (one each: this runs at
    every worker's start and reload). Settings each valid alone can leave nothing between
    them, and checked clean, then every handshake failed (found probing): tls_versions:
    tls1_0 tls1_1 (OpenSSL's security level allows neither), tls_ciphers: NULL-SHA256
    with tls1_2 (a name it knows and then drops), a cipher list for another kind of key
    than the certificate's. No version completing is a :class:`ConfigError`; one version
    failing while another completes is a warning naming it, not an error: a site may mean
    its TLS 1.2 clients to be refused, but tls_ciphers for an RSA key with an ECDSA
    certificate checked clean on TLS 1.3 and failed every TLS 1.2 client (found probing)."""
    failed = {}
    versions = _enabled_versions(config, service)
    for version in versions:
        reason = _handshake_problem(context, version)
        if reason is not None:
            failed[version] = reason
    if not failed:
        return
    settings = _settings_named(config, service)
    if len(failed) == len(versions):
        reasons = set(failed.values())
        if len(reasons) == 1:
            said = reasons.pop()
        else:
            said = "; ".join(f"{_VERSION_NAMES[v]}: {r}" for v, r in failed.items())
        message = f"no TLS handshake can complete with these settings ({settings}): {said}"
        raise config.error(_blamed_option(config, service, list(failed.values())), service, message)
    working = " or ".join(_VERSION_NAMES[v] for v in versions if v not in failed)
    for version, reason in failed.items():
        name = _VERSION_NAMES[version]
        message = (
            f"no {name} handshake can complete with these settings ({settings}): {reason}; "
            f"only {working} clients can connect (take {name} out of tls_versions if that "
            "is meant)"
        )
        warnings.append(
            _warning(config, _blamed_option(config, service, [reason]), service, message)
        )


def _warning(config: Config, name: str, service: str | None, message: str) -> Problem:
    return dataclasses.replace(config.problem_with(name, service, message), severity="warning")


def _settings_named(config: Config, service: str | None) -> str:
    """The settings a failed handshake can come from: those that are set, and the key."""
    named = [
        name
        for name in ("tls_versions", "tls_ciphers", "tls_eccurve")
        if config.setting(name, service) is not None
    ]
    return ", ".join([*named, "the certificate's key"])


def _blamed_option(config: Config, service: str | None, reasons: list[str]) -> str:
    """The option a reason points at, if it is set; an unset one changes nothing (found
    probing: "no shared cipher" blamed tls_ciphers, unset, for tls_eccurve's doing)."""
    text = " ".join(reasons)
    guesses = []
    if "protocol" in text or "version" in text:
        guesses.append("tls_versions")
    if "cipher" in text:
        guesses.append("tls_ciphers")
    if "group" in text or "curve" in text:
        guesses.append("tls_eccurve")
    guesses += ["tls_ciphers", "tls_eccurve", "tls_versions"]
    for name in guesses:
        if config.setting(name, service) is not None:
            return name
    return "tls_server_cert"


class NotPop3(SSL.Error):
    """The client asked for application protocols, none of them POP3."""


def _select_alpn(_connection: SSL.Connection, offered: list[bytes]) -> bytes:
    """ALPN "pop3" when the client offers it (a client offering none gets no ALPN). One
    that offers only others meant another service: the handshake ends with a fatal
    no_application_protocol alert (RFC 7301 §3.2), which is also what keeps an attacker
    from passing an HTTPS or IMAP client's TLS session off to us (the ALPACA attack,
    nginx's mail proxy refuses the same way). It went on without ALPN, as Python's ssl
    does (found probing)."""
    if b"pop3" in offered:
        return b"pop3"
    # pyOpenSSL answers an exception with SSL_TLSEXT_ERR_ALERT_FATAL and raises it from
    # do_handshake: the layer's handshake failure (TLSHandshakeError), its alert sent.
    shown = b", ".join(offered)[:100].decode("ascii", "backslashreplace")
    raise NotPop3(f"the client asked for application protocol {shown}, not pop3")


def facts(connection: SSL.Connection, server: ServerTLS) -> TLSInfo:
    tls_version = connection.get_protocol_version_name()
    bindings = {"tls-server-end-point": server.end_point_binding}
    if tls_version == "TLSv1.3":
        bindings["tls-exporter"] = connection.export_keying_material(
            EXPORTER_LABEL, EXPORTER_LENGTH, b""
        )
    elif tls_version in ("TLSv1.2", "TLSv1.1", "TLSv1") and extended_master_secret(connection):
        # Without the extended master secret (RFC 7627) a man in the middle can give two
        # connections the same Finished message (the triple handshake attack, RFC 9266
        # §1): tls-unique would then bind nothing, and SCRAM-PLUS would be relayed.
        unique = tls_unique(connection)
        if unique:
            bindings["tls-unique"] = unique
    return TLSInfo(
        version=tls_version,
        cipher=connection.get_cipher_name() or "",
        ssf=connection.get_cipher_bits() or 0,
        client_identity=client_identity(connection, server.client_identity_from),
        channel_bindings=tuple(bindings.items()),
    )


def tls_unique(connection: SSL.Connection) -> bytes | None:
    """RFC 5929 §3.1: the first Finished message of the latest handshake: the client's on a
    full handshake, ours on a resumed one (as Python's ssl computes it)."""
    if session_reused(connection):
        return connection.get_finished()
    return connection.get_peer_finished()


def verify_problem(connection: SSL.Connection) -> str | None:
    """Why the client's certificate did not verify ("certificate revoked"), or None: a
    failed handshake's OpenSSL reason is only "certificate verify failed", where Cyrus logs
    the verification's own error."""
    result = _lib.SSL_get_verify_result(connection._ssl)
    if result == 0:  # X509_V_OK
        return None
    return str(_ffi.string(_lib.X509_verify_cert_error_string(result)).decode(errors="replace"))


def extended_master_secret(connection: SSL.Connection) -> bool:
    return bool(_lib.SSL_get_extms_support(connection._ssl) == 1)


def session_reused(connection: SSL.Connection) -> bool:
    return bool(_lib.SSL_session_reused(connection._ssl))


def client_identity(connection: SSL.Connection, source: str) -> str | None:
    """The verified client certificate's CN or email SAN; None without one. We ask for a
    certificate only with ``tls_client_certs``, and take it only if it verified (a resumed
    session keeps the first handshake's result)."""
    if not connection.get_verify_mode() & SSL.VERIFY_PEER:
        return None
    if _lib.SSL_get_verify_result(connection._ssl) != 0:  # X509_V_OK
        return None
    if source != "email":
        return _common_name(connection)
    certificate = connection.get_peer_certificate(as_cryptography=True)
    if certificate is None:
        return None
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        emails = names.value.get_values_for_type(x509.RFC822Name)
    except x509.ExtensionNotFound:
        return None
    except ValueError:  # verified by OpenSSL, yet too odd for cryptography to read
        return None
    return emails[0] if emails else None


_NID_COMMON_NAME = _lib.OBJ_txt2nid(b"CN")


def _common_name(connection: SSL.Connection) -> str | None:
    """The subject's first CN, as OpenSSL reads it (in UTF-8 whatever its string type).
    Not through ``cryptography``: its Name warns (a UserWarning, two raw lines on standard
    error, found probing) for a CN over 64 characters, which RFC 5280's upper bound makes
    nonconforming but a CA the site trusts may still issue."""
    peer = connection.get_peer_certificate()
    if peer is None:
        return None
    subject = _lib.X509_get_subject_name(peer._x509)
    if subject == _ffi.NULL:
        return None
    index = _lib.X509_NAME_get_index_by_NID(subject, _NID_COMMON_NAME, -1)
    if index < 0:
        return None
    data = _lib.X509_NAME_ENTRY_get_data(_lib.X509_NAME_get_entry(subject, index))
    out = _ffi.new("unsigned char **")
    length = _lib.ASN1_STRING_to_UTF8(out, data)
    if length < 0:  # verified by OpenSSL, yet not text it can convert
        return None
    try:
        value = bytes(_ffi.buffer(out[0], length))
    finally:
        _lib.OPENSSL_free(out[0])
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None
