"""DIGEST-MD5 (RFC 2831), authentication only: the server offers ``qop="auth"`` and
nothing else, so no integrity or confidentiality layer is ever negotiated.

Security properties, and why the mechanism is LEGACY (RFC 6331 moved it to Historic):

* the password does not cross the wire, but one recorded exchange lets an eavesdropper test
  password guesses offline (DICTIONARY);
* the server must hold a plaintext equivalent (``PLAIN.B64``): a stolen credential file
  gives away the password;
* the server proves it knows the password too (``rspauth``, MUTUAL), but nothing binds the
  exchange to the TLS channel.

Checks, each ending the exchange with a failure: the response must parse as RFC 2831
§7.1 directives with every directive at most once; the nonce must be the one this exchange
made, with nonce-count 00000001 (there is no subsequent authentication, RFC 2831 §2.2, so a
replayed response always fails); the realm, when given, must be ours; the digest-uri must be
``<service>/<host>`` (RFC 2831 §2.1.2) where the host is one of this server's names: the
``servername``, a name in ``servername_aliases`` (case-insensitively), or the address the
client connected to (``127.0.0.1``, ``::1`` or ``[::1]``, compared as addresses). Clients
put there the host they dialled (Cyrus's pop3test, curl, GNU SASL), so a client that dials
the server by its address is accepted, while a response made for another server (a relayed
exchange, RFC 2831 §2.1.2's point) fails. The response is compared in constant time.

Character sets (RFC 2831 §2.1.2.1): with ``charset=utf-8`` the user name, realm and password
are hashed in ISO 8859-1 when they fit in it, else in UTF-8; without it they are ISO 8859-1
already. Clients disagree: Cyrus SASL sends UTF-8 without ``charset`` yet hashes in ISO
8859-1 where it can, GNU SASL and curl hash the UTF-8 bytes as they are. So both forms are
tried, always both, and a user name that is valid UTF-8 is read as UTF-8 even without
``charset``. Either form needs the password, so accepting both gives an attacker nothing.

An unknown user, or one without a plaintext equivalent, costs the same hashes against a
dummy password and fails at the same step.
"""

from __future__ import annotations

import hashlib
import ipaddress
from secrets import token_bytes

from pop3d.sasl.cram_md5 import stored_secret
from pop3d.sasl.mechanism import (
    Challenge,
    Context,
    Failure,
    Flag,
    MalformedResponse,
    Mechanism,
    Run,
    Success,
    utf8,
)
from pop3d.sasl.requests import (
    FetchSecrets,
    Secrets,
)
from pop3d.security.secret import equal

SCHEME = "PLAIN.B64"
MAX_RESPONSE = 4096  # RFC 2831 §2.1.2: a digest-response is less than 4096 bytes
NONCE_COUNT = b"00000001"
_REQUIRED = ("username", "nonce", "cnonce", "nc", "digest-uri", "response")
# RFC 2616 §2.2 token: CHAR except CTLs and separators
_TOKEN = frozenset(range(33, 127)) - frozenset(b'()<>@,;:\\"/[]?={}')
_LWS = frozenset(b" \t\r\n")
_HEX = frozenset(b"0123456789abcdefABCDEF")


def _h(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


def _hex_h(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).hexdigest().encode("ascii")


def compute(
    user_realm_password: bytes,
    *,
    nonce: bytes,
    cnonce: bytes,
    nc: bytes,
    qop: bytes,
    digest_uri: bytes,
    authzid: bytes | None = None,
) -> tuple[bytes, bytes]:
    """RFC 2831 §2.1.2.1 and §2.1.3: (response-value, rspauth value), lower-case hex, from
    ``username:realm:password`` as the client hashed it."""
    a1 = _h(user_realm_password) + b":" + nonce + b":" + cnonce
    if authzid is not None:
        a1 += b":" + authzid
    ha1 = _hex_h(a1)

    def kd(a2: bytes) -> bytes:
        return _hex_h(b":".join((ha1, nonce, nc, cnonce, qop, _hex_h(a2))))

    return kd(b"AUTHENTICATE:" + digest_uri), kd(b":" + digest_uri)


def quote(value: str) -> str:
    """An RFC 2831 quoted-string body."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def challenge_for(realm: str, nonce: str) -> bytes:
    # An empty realm is legal but curl then fails; the servername is what clients expect.
    return (
        f'realm="{quote(realm)}",nonce="{quote(nonce)}",qop="auth",charset=utf-8,algorithm=md5-sess'
    ).encode()


def parse_directives(message: bytes) -> dict[str, bytes]:
    """RFC 2831 §7.1: ``1#( token "=" ( token | quoted-string ) )``, names case-insensitive,
    null elements and linear white space allowed, every name at most once."""
    values: dict[str, bytes] = {}
    end = len(message)
    pos = 0

    def skip_lws(at: int) -> int:
        while at < end and message[at] in _LWS:
            at += 1
        return at

    def token(at: int) -> int:
        while at < end and message[at] in _TOKEN:
            at += 1
        return at

    while True:
        pos = skip_lws(pos)
        if pos == end:
            break
        if message[pos] == ord(","):
            pos += 1
            continue
        start, pos = pos, token(pos)
        name = message[start:pos].decode("ascii").lower()
        if not name:
            raise MalformedResponse("expected a directive name")
        pos = skip_lws(pos)
        if pos == end or message[pos] != ord("="):
            raise MalformedResponse(f"directive {name} has no value")
        pos = skip_lws(pos + 1)
        if pos < end and message[pos] == ord('"'):
            value, pos = _quoted_string(message, pos + 1)
        else:
            start, pos = pos, token(pos)
            value = message[start:pos]
            if not value:
                raise MalformedResponse(f"directive {name} has an empty or bad token")
        if name in values:
            raise MalformedResponse(f"directive {name} appears twice")
        values[name] = value
        pos = skip_lws(pos)
        if pos < end:
            if message[pos] != ord(","):
                raise MalformedResponse("directives must be separated by commas")
            pos += 1
    return values


def _quoted_string(message: bytes, pos: int) -> tuple[bytes, int]:
    """The body of a quoted-string that starts after its opening quote, with quoted-pairs
    resolved, and the position after the closing quote."""
    out = bytearray()
    while pos < len(message):
        byte = message[pos]
        if byte == ord('"'):
            return bytes(out), pos + 1
        if byte == ord("\\"):
            if pos + 1 == len(message):
                break
            out.append(message[pos + 1])
            pos += 2
            continue
        if (byte < 32 and byte != ord("\t")) or byte == 127:
            raise MalformedResponse("control character in a quoted string")
        out.append(byte)
        pos += 1
    raise MalformedResponse("unterminated quoted string")


def _to_8859_1(data: bytes) -> bytes:
    """RFC 2831 §8: UTF-8 text that fits in ISO 8859-1 is hashed in ISO 8859-1."""
    try:
        return data.decode("utf-8").encode("latin-1")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return data


def _user_name(raw: bytes, charset_utf8: bool) -> str:
    try:
        return utf8(raw, "user name")
    except MalformedResponse:
        if charset_utf8 or b"\0" in raw:
            raise
        # RFC 2831 §2.1.2: without charset the name is ISO 8859-1, where every byte decodes.
        return raw.decode("latin-1")


def _digest_uri_matches(uri: bytes, context: Context) -> bool:
    serv_type, sep, host = uri.partition(b"/")
    if not sep or b"/" in host or not uri.isascii():
        return False  # not ASCII, or a serv-name part: not the uri of this server
    if serv_type.decode("ascii").lower() != context.service.lower():
        return False
    name = host.decode("ascii").lower()
    names = {context.servername.lower(), *(alias.lower() for alias in context.server_aliases)}
    return name in names or _same_address(name, context.local_address)


def _same_address(name: str, local: str | None) -> bool:
    """Whether ``name`` is the connection's local address (IPv6 with or without brackets;
    an IPv4-mapped IPv6 address is its IPv4 address)."""
    if not local or not name:
        return False
    try:
        named = ipaddress.ip_address(name[1:-1] if name.startswith("[") else name)
        ours = ipaddress.ip_address(local.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ours, ipaddress.IPv6Address) and ours.ipv4_mapped is not None:
        ours = ours.ipv4_mapped
    if isinstance(named, ipaddress.IPv6Address) and named.ipv4_mapped is not None:
        named = named.ipv4_mapped
    return named == ours


class DigestMd5(Mechanism):
    name = "DIGEST-MD5"
    flags = Flag.DICTIONARY | Flag.MUTUAL | Flag.LEGACY
    credentials = (SCHEME,)

    def run(self, context: Context, initial: bytes | None) -> Run:
        if initial is not None:
            # Subsequent authentication (RFC 2831 §2.2) is the only use of an initial
            # response, and nonces do not outlive their exchange here.
            raise MalformedResponse("DIGEST-MD5 takes no initial response")
        nonce = context.nonce()
        realm = context.servername.encode("utf-8")
        response = yield Challenge(challenge_for(context.servername, nonce.decode("ascii")))
        if len(response) >= MAX_RESPONSE:
            raise MalformedResponse("response too long")
        directives = parse_directives(response)
        missing = [name for name in _REQUIRED if name not in directives]
        if missing:
            raise MalformedResponse(f"missing directives: {', '.join(missing)}")
        charset = directives.get("charset")
        if charset is not None and charset.lower() != b"utf-8":
            raise MalformedResponse("charset must be utf-8")
        user_raw = directives["username"]
        user = _user_name(user_raw, charset is not None)
        if not user:
            raise MalformedResponse("empty user name")
        authzid_raw = directives.get("authzid")
        authzid = "" if authzid_raw is None else utf8(authzid_raw, "authorization identity")
        qop = directives.get("qop", b"auth")
        if qop != b"auth":
            raise MalformedResponse("only qop=auth is offered")
        cnonce = directives["cnonce"]
        client_response = directives["response"]
        if not cnonce:
            raise MalformedResponse("empty cnonce")
        if len(client_response) != 32 or not set(client_response) <= _HEX:
            raise MalformedResponse("response is not 32 hex digits")
        if not equal(directives["nonce"], nonce):
            return Failure("nonce mismatch (a replayed or foreign response)", user)
        if directives["nc"] != NONCE_COUNT:
            return Failure("nonce count is not 00000001", user)
        client_realm = directives.get("realm")
        if client_realm is not None and client_realm != realm:
            return Failure("realm mismatch", user)
        digest_uri = directives["digest-uri"]
        if not _digest_uri_matches(digest_uri, context):
            return Failure("digest-uri names another service or host", user)

        secrets = yield FetchSecrets(user, (SCHEME,))
        assert isinstance(secrets, Secrets)
        secret, why_none = stored_secret(secrets)
        password = token_bytes(16) if secret is None else secret
        # RFC 2831 §2.1.2: a response without realm hashes the empty string.
        realm_used = b"" if client_realm is None else client_realm
        as_sent = b":".join((user_raw, realm_used, password))
        # Without charset, ISO 8859-1 bytes are not UTF-8 and pass through unchanged.
        converted = b":".join(_to_8859_1(part) for part in (user_raw, realm_used, password))
        wanted = client_response.lower()
        matched: bytes | None = None
        for candidate in (converted, as_sent):  # always both: the same work either way
            expected, rspauth = compute(
                candidate,
                nonce=nonce,
                cnonce=cnonce,
                nc=NONCE_COUNT,
                qop=qop,
                digest_uri=digest_uri,
                authzid=authzid_raw,
            )
            if equal(expected, wanted) and matched is None:
                matched = rspauth
        if secret is None:
            return Failure(why_none, user)
        if matched is None:
            return Failure("wrong password", user)
        return Success(user, authzid, final=b"rspauth=" + matched)
