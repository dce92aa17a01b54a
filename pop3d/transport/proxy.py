"""The PROXY protocol header (HAProxy, versions 1 and 2) that ``pop3d -H`` expects before
anything else on a connection, so logs and limits see the real client behind a proxy.

Sans-I/O: :func:`header_length` says how many bytes the header occupies given a prefix of
the stream (so the driver can read exactly that much and not one byte of the TLS or POP3
data behind it), and :func:`parse` decodes a complete header. Everything malformed raises
:class:`ProxyHeaderError`; a connection with a bad header is closed, never served.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from pop3d.transport.peer import peer_text

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107  # the longest valid v1 line, CRLF included
V2_MAX = 16 + 536  # a generous bound on address block plus TLVs we accept
NEED_MORE = -1


class ProxyHeaderError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    source: tuple[str, int] | None  # None for UNKNOWN / LOCAL: use the socket's own
    destination: tuple[str, int] | None

    def peer(self) -> str | None:
        if self.source is None:
            return None
        return peer_text(*self.source)


def header_length(prefix: bytes) -> int:
    """Total header size once ``prefix`` shows it; NEED_MORE if it does not yet."""
    if prefix.startswith(V2_SIGNATURE[: len(prefix)]) and len(prefix) < 16:
        return NEED_MORE
    if prefix.startswith(V2_SIGNATURE):
        length = int.from_bytes(prefix[14:16], "big")
        if 16 + length > V2_MAX:
            raise ProxyHeaderError("PROXY v2 header too long")
        return 16 + length
    if not b"PROXY ".startswith(prefix[:6]):
        raise ProxyHeaderError("no PROXY protocol header")
    end = prefix.find(b"\r\n")
    if end < 0:
        if len(prefix) >= V1_MAX:
            raise ProxyHeaderError("PROXY v1 line too long")
        return NEED_MORE
    return end + 2


def parse(header: bytes) -> ProxyHeader:
    if header.startswith(V2_SIGNATURE):
        return _parse_v2(header)
    return _parse_v1(header)


_ADDRESS_CHARACTERS = frozenset("0123456789abcdefABCDEF:.")


def _address(text: str, version: int) -> str:
    # An address literal and nothing else: ip_address() also takes an IPv6 scope
    # ("fe80::1%<anything but a space>"), and a scope holding a line feed went into every
    # log line naming the peer (found probing). The PROXY spec has no scopes.
    if not _ADDRESS_CHARACTERS.issuperset(text):
        raise ProxyHeaderError(f"bad address {text!r}")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError(f"bad address {text!r}") from None
    if address.version != version:
        raise ProxyHeaderError(f"{text} is not IPv{version}")
    return str(address)


def _port(text: str) -> int:
    if not text.isdigit() or len(text) > 5 or int(text) > 65535:
        raise ProxyHeaderError(f"bad port {text!r}")
    return int(text)


def _parse_v1(header: bytes) -> ProxyHeader:
    if not header.endswith(b"\r\n") or len(header) > V1_MAX:
        raise ProxyHeaderError("PROXY v1 line malformed")
    try:
        words = header[:-2].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 line is not ASCII") from None
    if words[0] != "PROXY" or len(words) < 2:
        raise ProxyHeaderError("PROXY v1 line malformed")
    if words[1] == "UNKNOWN":
        return ProxyHeader(None, None)
    if words[1] not in ("TCP4", "TCP6") or len(words) != 6:
        raise ProxyHeaderError("PROXY v1 line malformed")
    version = 4 if words[1] == "TCP4" else 6
    return ProxyHeader(
        (_address(words[2], version), _port(words[4])),
        (_address(words[3], version), _port(words[5])),
    )


def _parse_v2(header: bytes) -> ProxyHeader:
    if len(header) < 16:
        raise ProxyHeaderError("PROXY v2 header truncated")
    version_command, family = header[12], header[13]
    if version_command >> 4 != 2:
        raise ProxyHeaderError("PROXY v2: unsupported version")
    (length,) = struct.unpack("!H", header[14:16])
    body = header[16:]
    if len(body) != length:
        raise ProxyHeaderError("PROXY v2 header length mismatch")
    command = version_command & 0x0F
    if command == 0x0:  # LOCAL: a health check from the proxy itself
        return ProxyHeader(None, None)
    if command != 0x1:
        raise ProxyHeaderError("PROXY v2: unknown command")
    if family == 0x11 and length >= 12:  # TCP over IPv4
        source = str(ipaddress.IPv4Address(body[0:4]))
        destination = str(ipaddress.IPv4Address(body[4:8]))
        source_port, destination_port = struct.unpack("!HH", body[8:12])
    elif family == 0x21 and length >= 36:  # TCP over IPv6
        source = str(ipaddress.IPv6Address(body[0:16]))
        destination = str(ipaddress.IPv6Address(body[16:32]))
        source_port, destination_port = struct.unpack("!HH", body[32:36])
    elif family in (0x00, 0x31, 0x32):
        # UNSPEC, or a client of the proxy on a unix socket (spec 2.2: valid, with no
        # address of ours to give): the connection's own endpoints stand, as for LOCAL
        return ProxyHeader(None, None)
    else:
        raise ProxyHeaderError(f"PROXY v2: unsupported family 0x{family:02x}")
    return ProxyHeader((source, source_port), (destination, destination_port))
