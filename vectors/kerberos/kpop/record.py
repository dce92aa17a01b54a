"""Re-record fetchmail's KPOP sendauth exchange (see PROVENANCE.md beside this file).

Run from the repository root, as root or with unprivileged user namespaces (fetchmail needs
a private /etc/services, tests/support/fetchmail_kpop.py)::

    PYTHONPATH=. .venv/bin/python vectors/kerberos/kpop/record.py

It starts a throwaway MIT realm (k5test, KDC on 127.0.0.1), gets alice a TGT, runs
``fetchmail -p KPOP`` once against the canned test server (the real handshake and MIT
acceptor), and writes, all together (commit them as one):

* ``pop.keytab``: the pop/localhost keys of that realm (the realm is gone afterwards);
* ``fetchmail-sendauth.json``: the client's bytes up to the end of its AP-REQ, what our
  server answered, the capture time and the principals;
* ``krb5.conf``: default realm plus a clock skew of ten years, so the ticket in the vector
  is not "expired" when replayed later (tests can also pin the acceptor's clock instead).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))

from pop3d.kerberos.mit import Acceptor  # noqa: E402
from pop3d.kpop.handshake import Authenticated  # noqa: E402
from tests.support.fetchmail_kpop import FETCHED, fetchmail_kpop  # noqa: E402
from tests.support.kerberos import Realm, make_realm  # noqa: E402
from tests.support.kpop_server import CannedKpopServer  # noqa: E402

KRB5_CONF = """\
# Written by record.py: enough for an acceptor to check the recorded AP-REQ offline.
[libdefaults]
    default_realm = {realm}
    clockskew = 315360000
"""


def main() -> None:
    k5 = make_realm()
    realm = Realm(k5)
    work = Path(tempfile.mkdtemp(prefix="kpop-record-"))
    try:
        keytab = realm.service_keytab(work)
        env = realm.kinit("alice", work / "ccache")
        os.environ["KRB5_CONFIG"] = env["KRB5_CONFIG"]
        os.environ["KRB5RCACHEDIR"] = str(work)
        version = subprocess.run(
            ["fetchmail", "--version"], check=False, capture_output=True, text=True
        )
        first_line = (version.stdout or version.stderr).splitlines()[0]
        acceptor = Acceptor(keytab=str(keytab), host="localhost")
        with CannedKpopServer(acceptor.verify, [b"Subject: recorded\n\nhello\n"]) as server:
            captured = int(time.time())
            run = fetchmail_kpop(port=server.port, user="alice", env=env, home=work / "fm")
        if run.code != FETCHED:
            raise SystemExit(f"fetchmail exited {run.code}:\n{run.log}")
        outcome = server.sessions[0].outcome
        assert outcome is not None and isinstance(outcome.result, Authenticated)
        vector = {
            "source": f"fetchmail -p KPOP ({first_line}), MIT krb5 client, via record.py",
            "captured": captured,
            "realm": realm.name,
            "client_principal": outcome.result.principal,
            "service": "pop/localhost",
            "keytab": "pop.keytab",
            "client": outcome.received.hex(),
            "server": outcome.sent.hex(),
        }
        shutil.copyfile(keytab, HERE / "pop.keytab")
        (HERE / "fetchmail-sendauth.json").write_text(json.dumps(vector, indent=2) + "\n")
        (HERE / "krb5.conf").write_text(KRB5_CONF.format(realm=realm.name))
        print(f"recorded {len(outcome.received)} client bytes at {captured}")
    finally:
        k5.stop()
        shutil.rmtree(k5.tmpdir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
