"""The GS2 header (RFC 5801 §4) that SCRAM (RFC 5802 §7) and GS2-KRB5 share: the
channel-binding flag (``n``, ``y`` or ``p=<type>``) and the authorization identity, and the
checks both mechanisms make of it: a -PLUS mechanism needs a binding the connection has (a
plain one that asks for one gets it checked all the same), and ``y`` ("I could have bound,
but the server offered no -PLUS") while we did offer -PLUS is a downgrade."""

from __future__ import annotations

from dataclasses import dataclass

from pop3d.sasl import saslname
from pop3d.sasl.mechanism import Context, MalformedResponse


@dataclass(frozen=True, slots=True)
class Header:
    raw: bytes  # "n,a=alice," as sent: what the channel binding covers
    flag: bytes  # b"n", b"y" or b"p"
    binding: str | None  # the channel-binding type with "p"
    authzid: str
    rest: bytes  # the message after the header


def parse(message: bytes) -> Header:
    flag, sep, rest = message.partition(b",")
    authz, sep2, after = rest.partition(b",")
    if not sep or not sep2:
        raise MalformedResponse("no GS2 header")
    if authz and not authz.startswith(b"a="):
        raise MalformedResponse("bad authzid in the GS2 header")
    authzid = saslname.decode(authz[2:], "authorization identity") if authz else ""
    raw = flag + b"," + authz + b","
    if flag.startswith(b"p="):
        name = flag[2:].decode("ascii", "replace")
        if not name or not all(ch.isalnum() or ch in ".-" for ch in name):
            raise MalformedResponse("bad channel-binding name")
        return Header(raw, b"p", name, authzid, after)
    if flag not in (b"n", b"y"):
        raise MalformedResponse("bad GS2 channel-binding flag")
    return Header(raw, flag, None, authzid, after)


def binding_data(header: Header, context: Context, plus: bool) -> bytes:
    """The connection's channel-binding data the client must prove (b"" without one).
    Raises MalformedResponse for a mismatch of flag, mechanism and connection."""
    if header.binding is not None:
        # A binding under the plain name is verified as one under -PLUS: libsasl2 2.1.28's
        # client (Cyrus's pop3test, what Cyrus sites' tools link) asks for SCRAM-SHA-256
        # and sends p=tls-unique, which was refused as malformed (found probing). Nothing
        # is downgraded: the client binds, and a binding that does not match still fails.
        data = context.channel_bindings.get(header.binding)
        if data is None:
            raise MalformedResponse(f"channel binding {header.binding} is not available")
        return data
    if plus:
        raise MalformedResponse("-PLUS without a channel binding")
    if header.flag == b"y" and context.plus_offered:
        raise MalformedResponse("downgrade: client saw no -PLUS but we offered it")
    return b""
