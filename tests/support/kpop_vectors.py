"""The one accessor for vectors/kerberos/kpop/ (strict: a missing or unknown key, bad hex,
or a file that is not where the vector says is an error)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

KPOP_VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "kerberos" / "kpop"
_KEYS = {
    "source", "captured", "realm", "client_principal", "service", "keytab", "client", "server",
}  # fmt: skip


@dataclass(frozen=True)
class SendauthVector:
    source: str
    captured: int  # Unix time of the capture: pin the acceptor's clock here
    realm: str
    client_principal: str
    service: str
    keytab: Path  # the service's keys at capture time
    krb5_conf: Path  # default realm and a ten-year clock skew
    client: bytes  # the client's bytes through the end of its AP-REQ
    server: bytes  # what our server answered (its AP-REP cannot be replayed byte-exact)


def load_sendauth(name: str = "fetchmail-sendauth.json") -> SendauthVector:
    raw = json.loads((KPOP_VECTORS / name).read_text())
    if set(raw) != _KEYS:
        raise ValueError(f"{name}: keys {sorted(set(raw) ^ _KEYS)} missing or unknown")
    keytab = KPOP_VECTORS / raw["keytab"]
    krb5_conf = KPOP_VECTORS / "krb5.conf"
    for path in (keytab, krb5_conf):
        if not path.is_file():
            raise ValueError(f"{name}: {path} is missing")
    return SendauthVector(
        source=raw["source"],
        captured=int(raw["captured"]),
        realm=raw["realm"],
        client_principal=raw["client_principal"],
        service=raw["service"],
        keytab=keytab,
        krb5_conf=krb5_conf,
        client=bytes.fromhex(raw["client"]),
        server=bytes.fromhex(raw["server"]),
    )
