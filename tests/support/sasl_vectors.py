"""The one accessor for vectors/sasl/*.json (strict: unknown keys or steps are errors).

A file holds a list of cases::

    {"name": "rfc5802-section-5", "source": "RFC 5802 §5", "valid": true,
     "mechanism": "SCRAM-SHA-1", "user": "user", "password": "pencil",
     "server": {"nonce": "3rfcNHYJY1ZVvWVs7j", "salt": "QSXCR+Q6sek8bf92",
                "iterations": 4096, "servername": "...", "channel_binding": {...}},
     "steps": [["C", "<client message>"], ["S", "<server message>"], ...],
     "outcome": "success" | "failure"}

Messages are text as it appears in the RFC (decoded, not base64) unless the key is
"C64"/"S64" (base64, for binary messages). "server" fixes what the server would otherwise
choose at random, so the exchange replays byte-exact.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SASL_VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "sasl"
_CASE_KEYS = {
    "name",
    "source",
    "valid",
    "mechanism",
    "user",
    "password",
    "server",
    "steps",
    "outcome",
    "note",
    "authzid",
}
_SERVER_KEYS = {
    "nonce",
    "salt",
    "iterations",
    "servername",
    "channel_binding",
    "plus_offered",
    "realm",
    "client_identity",
}


class VectorError(Exception):
    pass


@dataclass(frozen=True)
class Case:
    name: str
    source: str
    valid: bool
    mechanism: str
    user: str
    password: str
    outcome: str
    steps: list[tuple[str, bytes]]
    server: dict[str, Any] = field(default_factory=dict)
    authzid: str = ""


def _message(kind: str, value: str, where: str) -> tuple[str, bytes]:
    if kind in ("C", "S"):
        return kind, value.encode("utf-8")
    if kind in ("C64", "S64"):
        return kind[0], base64.b64decode(value, validate=True)
    raise VectorError(f"{where}: unknown step kind {kind!r}")


def load(name: str) -> list[Case]:
    path = SASL_VECTORS / name
    cases = []
    for index, raw in enumerate(json.loads(path.read_text(encoding="utf-8"))):
        where = f"{path.name}[{index}]"
        unknown = set(raw) - _CASE_KEYS
        if unknown:
            raise VectorError(f"{where}: unknown keys {sorted(unknown)}")
        server = raw.get("server", {})
        if set(server) - _SERVER_KEYS:
            raise VectorError(f"{where}: unknown server keys {sorted(set(server) - _SERVER_KEYS)}")
        if raw["outcome"] not in ("success", "failure"):
            raise VectorError(f"{where}: outcome must be success or failure")
        cases.append(
            Case(
                name=raw["name"],
                source=raw["source"],
                valid=bool(raw["valid"]),
                mechanism=raw["mechanism"],
                user=raw["user"],
                password=raw["password"],
                outcome=raw["outcome"],
                steps=[_message(kind, value, where) for kind, value in raw["steps"]],
                server=server,
                authzid=raw.get("authzid", ""),
            )
        )
    return cases
