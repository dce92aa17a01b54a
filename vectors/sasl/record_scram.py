"""Records SCRAM-SHA-512 and -PLUS exchanges (no RFC publishes any) into scram.json:
scramp 1.5 as the client with a fixed client nonce, pop3d's mechanism as the server with a
fixed server nonce, salt and iteration count, and fixed channel-binding data. Run from the
repository root: ``.venv/bin/python vectors/sasl/record_scram.py``. Cases already present
(by name) are replaced, others kept."""

from __future__ import annotations

import base64
import json
import sys
import tempfile
from pathlib import Path

import scramp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pop3d.sasl.mechanism import Success
from pop3d.sasl.scram import Scram
from tests.support import sasl_run, sasl_vectors

HERE = Path(__file__).parent
SALT = base64.b64encode(b"pop3d-vector-salt").decode()
BINDING = base64.b64encode(bytes(range(32))).decode()  # stands for a real binding's data


def record(mechanism: str, binding_type: str | None, name: str) -> dict[str, object]:
    server = {"nonce": "pop3dServerNonce0123", "salt": SALT, "iterations": 4096}
    if binding_type:
        server["channel_binding"] = {binding_type: BINDING}
    case = sasl_vectors.Case(name, "", True, mechanism, "user", "pencil", "success", [], server)
    with tempfile.TemporaryDirectory() as tmp:
        authenticator = sasl_run.authenticator_for(Path(tmp), case)
        binding = (binding_type, base64.b64decode(BINDING)) if binding_type else None
        client = scramp.ScramClient(
            [mechanism], "user", "pencil", channel_binding=binding, c_nonce="clientNonceForVectors"
        )
        hash_name = mechanism.removeprefix("SCRAM-").removesuffix("-PLUS")
        first = client.get_client_first()
        steps = [["C", first]]

        def respond(challenge: bytes) -> bytes:
            steps.append(["S", challenge.decode()])
            client.set_server_first(challenge.decode())
            final = client.get_client_final()
            steps.append(["C", final])
            return final.encode()

        result = sasl_run.converse(
            Scram(hash_name, binding_type is not None),
            sasl_run.context_for(case),
            first.encode(),
            respond,
            lambda request: sasl_run.carry_out(authenticator, request),
        )
        assert isinstance(result, Success) and result.final is not None
        client.set_server_final(result.final.decode())
        steps.append(["S", result.final.decode()])
    return {
        "name": name,
        "source": "recorded: scramp 1.5.0 (client) against pop3d 0.1.0 (server), "
        "vectors/sasl/record_scram.py",
        "valid": True,
        "mechanism": mechanism,
        "user": "user",
        "password": "pencil",
        "server": server,
        "steps": steps,
        "outcome": "success",
    }


def main() -> None:
    path = HERE / "scram.json"
    cases = json.loads(path.read_text())
    recorded = [
        record("SCRAM-SHA-512", None, "recorded-scram-sha-512"),
        record("SCRAM-SHA-256-PLUS", "tls-server-end-point", "recorded-sha-256-plus-end-point"),
        record("SCRAM-SHA-512-PLUS", "tls-unique", "recorded-sha-512-plus-unique"),
        record("SCRAM-SHA-1-PLUS", "tls-server-end-point", "recorded-sha-1-plus-end-point"),
    ]
    names = {case["name"] for case in recorded}
    cases = [c for c in cases if c["name"] not in names] + recorded
    # an invalid twin of each: the channel-binding data changed (a man in the middle)
    for case in recorded:
        if "channel_binding" in case["server"]:  # type: ignore[operator]
            twin = json.loads(json.dumps(case))
            twin["name"] = str(case["name"]) + "-other-channel"
            twin["valid"] = False
            twin["outcome"] = "failure"
            (kind,) = twin["server"]["channel_binding"]
            twin["server"]["channel_binding"] = {kind: base64.b64encode(b"\x00" * 32).decode()}
            twin["steps"] = twin["steps"][:3]
            twin["source"] = str(case["source"]) + "; server binding data replaced"
            if twin["name"] not in {c["name"] for c in cases}:
                cases.append(twin)
    path.write_text(json.dumps(cases, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(cases)} cases")


if __name__ == "__main__":
    main()
