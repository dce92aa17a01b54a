"""OAUTHBEARER (RFC 7628) and XOAUTH2 (Google's older format): an OAuth 2.0 bearer token
in one client message. The mechanism only parses; the driver validates the token
(:class:`~pop3d.sasl.requests.VerifyBearer`, answered by
:meth:`pop3d.auth.tokens.TokenValidator.verify`) and the session checks the user exists.

OAUTHBEARER, RFC 7628 §3.1::

    n,a=user@example.com,^Ahost=server.example.com^Aport=143^Aauth=Bearer <token>^A^A

a GS2 header ("n" or "y": the mechanism has no channel binding, so "p=" is refused), then
``key=value`` pairs each ended by 0x01, then one more 0x01. XOAUTH2 has no GS2 header::

    user=someuser@example.com^Aauth=Bearer <token>^A^A

On a refused token (a token for a user the server does not know is one) the server sends an
error as one more challenge and fails the exchange after the client's answer, which for
OAUTHBEARER must be the single byte 0x01 (RFC 7628 §3.2.2, §4.3) and for XOAUTH2 is an
empty response. OAUTHBEARER's error is
``{"status":"invalid_token","schemes":"bearer"}`` (with ``"scope"`` when one is required);
XOAUTH2 sends the same with the HTTP status Google uses ("401"; "400", "403").

A named user (the GS2 authzid, XOAUTH2's ``user=``) must be the token's user, compared
case-insensitively here; the session compares the canonical forms again.

Bearer tokens are replayable secrets like passwords (RFC 6750 §5: protect them in
transport), so both mechanisms are PLAINTEXT as well as TOKEN: offered without TLS only
where ``allowplaintext`` allows passwords.
"""

from __future__ import annotations

import json
import re

from pop3d.sasl import saslname
from pop3d.sasl.mechanism import (
    Challenge,
    Context,
    Failure,
    Flag,
    MalformedResponse,
    Mechanism,
    Run,
    Success,
)
from pop3d.sasl.requests import (
    AuthResult,
    BearerResult,
    ResolveUser,
    VerifyBearer,
)
from pop3d.security.secret import Secret

KVSEP = b"\x01"
MAX_MESSAGE = 32768  # the token is capped at 16 kB by the validator; this is far above it
_KEY = re.compile(rb"[A-Za-z]+")
_VALUE_BAD = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # controls other than HT CR LF
# RFC 6750 §2.1: "Bearer" 1*SP b64token; the scheme is case-insensitive (RFC 7235 §2.1)
_BEARER = re.compile(rb"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*)")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")
_HTTP_STATUS = {"invalid_request": "400", "invalid_token": "401", "insufficient_scope": "403"}
INVALID_TOKEN = "invalid_token"  # noqa: S105 (an RFC 6750 error code)


def parse_pairs(data: bytes) -> dict[str, bytes]:
    """``*kvpair kvsep`` (each kvpair is ``key=value`` ended by 0x01): a dict, or
    MalformedResponse. Keys are ASCII letters and appear once; values are UTF-8 without
    control characters other than HTAB, CR and LF."""
    if not data.endswith(KVSEP + KVSEP):
        raise MalformedResponse("message not terminated by 0x01 0x01")
    pairs: dict[str, bytes] = {}
    for item in data[:-2].split(KVSEP):
        key, sep, value = item.partition(b"=")
        if not sep or not _KEY.fullmatch(key):
            raise MalformedResponse("bad key=value pair")
        if _VALUE_BAD.search(value):
            raise MalformedResponse(f"control character in the value of {key.decode()}")
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedResponse(f"the value of {key.decode()} is not UTF-8") from None
        name = key.decode("ascii")
        if name in pairs:
            raise MalformedResponse(f"key {name} appears twice")
        pairs[name] = value
    return pairs


def bearer_token(pairs: dict[str, bytes]) -> bytes:
    auth = pairs.get("auth")
    if auth is None:
        raise MalformedResponse("no auth= pair")
    match = _BEARER.fullmatch(auth)
    if match is None:
        raise MalformedResponse("auth= is not 'Bearer <token>'")
    return match.group(1)


def _same_user(named: str, identity: str) -> bool:
    return named.casefold() == identity.casefold()


class _BearerMechanism(Mechanism):
    flags = Flag.TOKEN | Flag.PLAINTEXT

    def _error(self, status: str, scope: str) -> bytes:
        """The error JSON; ``scope`` is the one the site requires (oauth_scope), if any."""
        raise NotImplementedError

    def _answer_ok(self, answer: bytes) -> bool:
        raise NotImplementedError

    def _parse(self, message: bytes) -> tuple[str, bytes]:
        """(named user or "", token) from the client message."""
        raise NotImplementedError

    def run(self, context: Context, initial: bytes | None) -> Run:
        message = initial if initial is not None else (yield Challenge(b""))
        if len(message) > MAX_MESSAGE:
            raise MalformedResponse(f"message longer than {MAX_MESSAGE} bytes")
        named, token = self._parse(message)
        result = yield VerifyBearer(Secret(token), named)
        assert isinstance(result, BearerResult)
        if result.identity is None:
            status, reason, who = result.error or INVALID_TOKEN, result.reason, named
        elif named and not _same_user(named, result.identity):
            status = INVALID_TOKEN
            reason = f"token is for {result.identity!r}, not {named!r}"
            who = result.identity
        else:
            # A good token for a user we do not know is refused as a bad one is (RFC 7628
            # §3.2.2: the error challenge, the client's answer, the failure): refused at
            # once, the two could be told apart (found probing).
            known = yield ResolveUser(result.identity)
            assert isinstance(known, AuthResult)
            if known.identity is not None:
                return Success(result.identity, named)
            status, reason, who = INVALID_TOKEN, known.reason, result.identity
        answer = yield Challenge(self._error(status, context.oauth_scope))
        if not self._answer_ok(answer):
            reason += "; then a wrong answer to the error challenge"
        return Failure(reason or "token refused", who)


class OAuthBearer(_BearerMechanism):
    name = "OAUTHBEARER"

    def _parse(self, message: bytes) -> tuple[str, bytes]:
        flag, sep, rest = message.partition(b",")
        if not sep:
            raise MalformedResponse("no GS2 header")
        if flag.startswith(b"p="):
            raise MalformedResponse("OAUTHBEARER has no channel binding")
        if flag not in (b"n", b"y"):
            raise MalformedResponse("bad GS2 channel-binding flag")
        authz, sep, rest = rest.partition(b",")
        if not sep:
            raise MalformedResponse("no GS2 header")
        named = ""
        if authz:
            if not authz.startswith(b"a=") or authz == b"a=":
                raise MalformedResponse("bad authzid in GS2 header")
            named = saslname.decode(authz[2:], "authorization identity")
        if not rest.startswith(KVSEP):
            raise MalformedResponse("no 0x01 after the GS2 header")
        return named, bearer_token(parse_pairs(rest[1:]))

    def _error(self, status: str, scope: str) -> bytes:
        error = {"status": status, "schemes": "bearer"}
        if scope:
            error["scope"] = scope
        return json.dumps(error, separators=(",", ":")).encode()

    def _answer_ok(self, answer: bytes) -> bool:
        return answer == KVSEP


class XOAuth2(_BearerMechanism):
    name = "XOAUTH2"

    def _parse(self, message: bytes) -> tuple[str, bytes]:
        pairs = parse_pairs(message)
        user = pairs.get("user", b"").decode("utf-8")  # parse_pairs checked it is UTF-8
        if _CONTROLS.search(user):
            raise MalformedResponse("control character in user=")
        return user, bearer_token(pairs)

    def _error(self, status: str, scope: str) -> bytes:
        error = {"status": _HTTP_STATUS.get(status, "401"), "schemes": "bearer"}
        if scope:
            error["scope"] = scope
        return json.dumps(error, separators=(",", ":")).encode()

    def _answer_ok(self, answer: bytes) -> bool:
        return answer == b""
