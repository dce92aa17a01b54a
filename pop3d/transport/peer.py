"""How a connection's peer is written (``192.0.2.7:110``, ``[2001:db8::1]:110``): in every
log line, the audit trail, and the keys of per-host limits and login records.

An IPv4 client of a dual-stack listener (``[::]:110``), or one a proxy forwards as TCP6,
arrives as an IPv4-mapped IPv6 address (``::ffff:192.0.2.7``, which Python 3.11 writes
``::ffff:c000:207``). It is written as the IPv4 address it is, as Dovecot writes it: the
same client is then one host whichever way it came, and fail2ban bans the address the
packets come from (a ban of the mapped form goes to ip6tables and stops nothing).
"""

from __future__ import annotations

import ipaddress


def peer_text(host: str, port: int) -> str:
    if ":" not in host:
        return f"{host}:{port}"
    if host[:7].lower() == "::ffff:":
        try:
            mapped = ipaddress.IPv6Address(host).ipv4_mapped
        except ValueError:
            mapped = None
        if mapped is not None:
            return f"{mapped}:{port}"
    return f"[{host}]:{port}"
