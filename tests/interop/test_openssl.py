"""openssl s_client against a real pop3d-master: a whole session through ``-starttls pop3``
and through POP3S, the negotiated protocol version, and the refusal of TLS 1.1.

``-quiet`` keeps s_client reading after stdin ends (it implies ``-ign_eof``), so it exits
when the server closes the connection after QUIT; its stdout is then exactly what the server
sent inside TLS. With ``-starttls pop3`` s_client itself consumes the greeting and the STLS
answer."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pop3d import IMPLEMENTATION
from tests.interop.conftest import Served, run
from tests.support.lab import Lab, make_certificates, start_server

pytestmark = pytest.mark.interop

SESSION = b"CAPA\r\nUSER alice\r\nPASS wonderland\r\nSTAT\r\nQUIT\r\n"
# the capabilities inside TLS, before login: no STLS any more
CAPA = [
    "+OK Capability list follows",
    "SASL SCRAM-SHA-512-PLUS SCRAM-SHA-256-PLUS SCRAM-SHA-512 SCRAM-SHA-256 PLAIN",
    "EXPIRE NEVER",
    "TOP",
    "UIDL",
    "PIPELINING",
    "RESP-CODES",
    "AUTH-RESP-CODE",
    "USER",
    f"IMPLEMENTATION {IMPLEMENTATION}",
    ".",
]
SESSION_ID = re.compile(r"^\+OK Mailbox locked and ready SESSIONID=<[^<>\s]+>$")
VERSION = re.compile(r"^Protocol version: (\S+)$", re.MULTILINE)


def s_client(ca: Path, *args: str, data: bytes = b"QUIT\r\n") -> tuple[int, str, str]:
    done = run(
        ["openssl", "s_client", "-CAfile", str(ca), "-verify_return_error", *args], input=data
    )
    return (
        done.returncode,
        done.stdout.decode(errors="replace"),
        done.stderr.decode(errors="replace"),
    )


def starttls(port: int, ca: Path, *args: str, data: bytes = b"QUIT\r\n") -> tuple[int, str, str]:
    return s_client(ca, "-starttls", "pop3", "-connect", f"127.0.0.1:{port}", *args, data=data)


def check_session(code: int, out: str, err: str) -> None:
    assert code == 0, err
    lines = out.split("\r\n")
    assert lines[:11] == CAPA, out
    assert lines[11] == "+OK User name accepted, password please"
    assert SESSION_ID.match(lines[12]), lines[12]
    assert lines[13:] == ["+OK 7 28700", "+OK Logging out", ""]


def test_starttls_session(served: Served) -> None:
    check_session(*starttls(served.port, served.ca, "-quiet", data=SESSION))
    pattern = (
        r"^.*login: \S+ \[\S+\] alice plaintext\+TLS User logged in "
        r".* tls=<TLSv1\.[23]> .* layer=<->"
    )
    assert re.search(pattern, served.log(), re.M)


def test_pop3s_session(served: Served) -> None:
    address = f"127.0.0.1:{served.pop3s}"
    code, out, err = s_client(served.ca, "-connect", address, "-quiet", data=SESSION)
    # without -starttls the greeting is s_client's to print: it comes first
    greeting, _, rest = out.partition("\r\n")
    assert greeting.startswith(f"+OK lab.test {IMPLEMENTATION} server ready <"), out
    check_session(code, rest, err)


def test_negotiated_version_is_tls12_or_tls13(served: Served) -> None:
    code, _, err = starttls(served.port, served.ca, "-brief", "-verify_hostname", "localhost")
    assert code == 0, err
    assert "CONNECTION ESTABLISHED" in err
    assert "Verification: OK" in err
    assert VERSION.findall(err) in (["TLSv1.3"], ["TLSv1.2"]), err


def test_tls12_when_the_client_offers_no_more(served: Served) -> None:
    code, _, err = starttls(served.port, served.ca, "-brief", "-tls1_2")
    assert code == 0, err
    assert VERSION.findall(err) == ["TLSv1.2"], err


# TLS 1.1 needs security level 0 on both ends in OpenSSL 3 (SHA-1): with it the client can
# really speak TLS 1.1, so a refusal comes from the server's version floor.
TLS11 = ("-brief", "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
TLS10 = ("-brief", "-tls1", "-cipher", "DEFAULT@SECLEVEL=0")


def test_tls10_is_refused(served: Served) -> None:
    code, out, err = starttls(served.port, served.ca, *TLS10)
    assert code != 0, err
    assert "CONNECTION ESTABLISHED" not in err
    assert "+OK" not in out
    assert "unsupported protocol" in served.wait_for_log("unsupported protocol")


def test_tls11_is_refused(served: Served) -> None:
    code, out, err = starttls(served.port, served.ca, *TLS11)
    assert code != 0, err
    assert "CONNECTION ESTABLISHED" not in err
    assert VERSION.findall(err) == []
    assert "+OK" not in out
    assert "unsupported protocol" in served.wait_for_log("unsupported protocol")  # the STLS one

    code, out, err = s_client(served.ca, "-connect", f"127.0.0.1:{served.pop3s}", *TLS11)
    assert code != 0, err
    assert "CONNECTION ESTABLISHED" not in err
    assert "+OK" not in out
    log = served.wait_for_log("ended: TLS handshake failed", 2)
    assert len(re.findall(r"ended: .*unsupported protocol", log)) == 2


def test_tls11_works_when_configured(tmp_path: Path) -> None:
    """The control for :func:`test_tls11_is_refused`: the same client gets TLS 1.1 from a
    server configured to allow it."""
    lab = Lab(
        tmp_path / "lab",
        extra_config="tls_versions: tls1_1 tls1_2 tls1_3\ntls_ciphers: DEFAULT@SECLEVEL=0\n",
    ).create(with_tls=True)
    assert lab.tls is not None
    server = start_server(lab, {"pop3": ""})
    try:
        code, _, err = starttls(server.port, lab.tls.ca, *TLS11)
    finally:
        server.stop()
    assert code == 0, err
    assert VERSION.findall(err) == ["TLSv1.1"], err


def test_certificate_from_another_ca_is_refused(tmp_path: Path, served: Served) -> None:
    other = make_certificates(tmp_path / "other")
    code, out, err = starttls(served.port, other.ca, "-quiet", data=SESSION)
    assert code != 0, err
    assert "verify error" in err
    assert "+OK" not in out
    assert "User logged in" not in served.log()
