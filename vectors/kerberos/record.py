"""Re-record the Kerberos vectors: a throwaway k5test realm, alice's ticket, one GSSAPI and
one GS2-KRB5 exchange made by a real python-gssapi initiator against pop3d's mechanisms,
and the keytab they were made with. Run from the repository root:

    PYTHONPATH=. .venv/bin/python vectors/kerberos/record.py

Writes pop.keytab, krb5.conf and exchanges.json beside this file (commit them together).
See PROVENANCE.md for why the GSSAPI client asks for no mutual authentication.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sys
from pathlib import Path

import gssapi.raw as gr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from pop3d.sasl.gs2 import GS2KRB5  # noqa: E402
from pop3d.sasl.gssapi import GSSAPI, LAYER_CONFIDENTIALITY  # noqa: E402
from pop3d.sasl.mechanism import Context, Success  # noqa: E402
from tests.sasl.kerberos_client import GssapiClient, initiator, run  # noqa: E402
from tests.sasl.test_gs2_spnego import strip  # noqa: E402
from tests.support.kerberos import Realm, make_realm  # noqa: E402

# 1,000,000,000 s (31 years) of clock skew: the recorded ticket and authenticator stay
# "current" for MIT's checks; the replay cache is switched off by KRB5RCACHETYPE=none.
KRB5_CONF = """\
[libdefaults]
    default_realm = {realm}
    clockskew = 1000000000
    dns_lookup_kdc = false
    dns_lookup_realm = false
    rdns = false
"""

FRAMES = [b"STAT\r\n", b"RETR 1\r\n", b"QUIT\r\n"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def main() -> None:
    k5 = make_realm()
    realm = Realm(k5)
    try:
        work = Path(k5.tmpdir)
        os.environ.update(realm.env)
        ccache = work / "alice.cc"
        realm.kinit("alice", ccache)
        keytab = realm.service_keytab(work)
        context = Context(servername="localhost", keytab=str(keytab))

        # GSSAPI with a confidentiality layer, then three frames the client sends in it.
        flags = int(
            gr.RequirementFlag.integrity
            | gr.RequirementFlag.confidentiality
            | gr.RequirementFlag.replay_detection
            | gr.RequirementFlag.out_of_sequence_detection
        )
        client = GssapiClient(initiator(ccache, flags=flags), layer=LAYER_CONFIDENTIALITY)
        log: list[tuple[str, bytes]] = []
        result = run(GSSAPI(), context, client.initial(), client.respond, log)
        assert isinstance(result, Success) and result.layer is not None, result
        frames = []
        for plain in FRAMES:
            token = client.ctx.wrap(plain, True).message
            frames.append(len(token).to_bytes(4, "big") + token)
        gssapi_case = {
            "mechanism": "GSSAPI",
            "client": [b64(data) for who, data in log if who == "C"],
            "server": [b64(data) for who, data in log if who == "S"],
            "user": result.authcid,
            "layer": "confidentiality",
            "ssf": result.layer.ssf,
            "frames": [
                {"wire": b64(f), "plain": b64(p)} for f, p in zip(frames, FRAMES, strict=True)
            ],
        }

        # GS2-KRB5 with an authzid (mutual authentication is required here, and harmless:
        # nothing after the context tokens depends on the acceptor's subkey).
        header = b"n,a=alice,"
        gs2_client = initiator(ccache, binding=header)
        first = header + strip(gs2_client.step())
        gs2_result = run(GS2KRB5(False), context, first, lambda _c: b"")
        assert isinstance(gs2_result, Success), gs2_result
        gs2_case = {
            "mechanism": "GS2-KRB5",
            "client": [b64(first)],
            "server": [b64(gs2_result.final or b"")],
            "user": gs2_result.authcid,
            "authzid": gs2_result.authzid,
        }

        shutil.copy(keytab, HERE / "pop.keytab")
        os.chmod(HERE / "pop.keytab", 0o600)
        (HERE / "krb5.conf").write_text(KRB5_CONF.format(realm=realm.name))
        document = {
            "realm": realm.name,
            "servername": "localhost",
            "service": "pop",
            "cases": [gssapi_case, gs2_case],
        }
        (HERE / "exchanges.json").write_text(json.dumps(document, indent=2) + "\n")
    finally:
        k5.stop()
        shutil.rmtree(k5.tmpdir, ignore_errors=True)


if __name__ == "__main__":
    main()
