"""Fuzz target: the PROXY protocol v1/v2 header (pop3d/transport/proxy.py).

Invariant: for any bytes, ``header_length`` of every prefix and ``parse`` of the header it
delimits either succeed or raise ProxyHeaderError, never another exception; the length is
stable once known (a longer prefix never changes it) and never shorter than 16 (v2) or
8 (v1) octets; a parsed header's ports are 0..65535 and its addresses round-trip through
``ipaddress``.

    python fuzz/proxy_header.py [libFuzzer flags] [corpus dir ...]
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo root, not fuzz/

import atheris

with atheris.instrument_imports(include=["pop3d"]):
    from fuzz.support import check
    from pop3d.transport import proxy


def _check_address(address: tuple[str, int] | None) -> None:
    if address is None:
        return
    host, port = address
    check(0 <= port <= 65535, f"port {port}")
    check(str(ipaddress.ip_address(host)) == host, f"address {host!r} does not round-trip")


def test_one_input(data: bytes) -> None:
    known = proxy.NEED_MORE
    # Every prefix up to past the longest header (V2_MAX), then the whole input.
    ends = [*range(min(len(data), proxy.V2_MAX + 16) + 1), len(data)]
    for end in ends:
        try:
            length = proxy.header_length(data[:end])
        except proxy.ProxyHeaderError:
            check(known == proxy.NEED_MORE, f"error after the length {known} was known")
            return
        if known != proxy.NEED_MORE:
            check(length == known, f"length changed from {known} to {length}")
            continue
        if length == proxy.NEED_MORE:
            continue
        check(length >= 8, f"header length {length}")
        known = length
    if known == proxy.NEED_MORE or known > len(data):
        return
    try:
        header = proxy.parse(data[:known])
    except proxy.ProxyHeaderError:
        return
    _check_address(header.source)
    _check_address(header.destination)
    header.peer()


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
