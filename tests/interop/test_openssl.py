"""openssl s_client against a real pop3d-master: a whole session through ``-starttls pop3``
and through POP3S, the negotiated protocol version, and the refusal of TLS 1.1.

``-quiet`` keeps s_client reading after stdin ends (it implies ``-ign_eof``), so it exits
when the server closes the connection after QUIT; its stdout is then exactly what the server
sent inside TLS. With ``-starttls pop3`` s_client itself consumes the greeting and the STLS
answer."""

from __future__ import annotations

import os
import re
import select
import subprocess
import time
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


KEY_UPDATE_SENT = b"(the client's KeyUpdate)"


@pytest.mark.parametrize("command", ["k", "K"])
def test_a_tls13_key_update_mid_session(served: Served, command: str) -> None:
    """TLS 1.3 KeyUpdate (RFC 8446, 4.6.3) from the client between commands: ``k`` updates
    the client's keys only, ``K`` also asks the server to update its own, which it must
    send before its next application data (OpenSSL sends it with that data). s_client
    sends one for a line that is the letter, and only when it runs interactively (no
    ``-quiet``), so the lines go one at a time. ``-msg`` shows the handshake messages."""
    command_line = [
        *("openssl", "s_client", "-CAfile", str(served.ca), "-verify_return_error"),
        *("-connect", f"127.0.0.1:{served.pop3s}", "-tls1_3", "-msg"),
    ]
    # No -crlf: with it, s_client 3.0 sends the command letter as data. The POP3 lines
    # carry their own CRLF; "quit", not "QUIT": a line starting with Q is s_client's
    # command to hang up. Each line waits for the answer to the one before, or two lines
    # could reach s_client in one read and the letter would go out as data.
    steps = [
        (b"USER alice\r\n", b"+OK User name accepted"),
        (b"PASS wonderland\r\n", b"+OK Mailbox locked"),
        (f"{command}\n".encode(), KEY_UPDATE_SENT),
        (b"STAT\r\n", b"+OK 7 "),
        (b"NOOP\r\n", b"+OK\r\n"),
        (b"quit\r\n", b"+OK Logging out"),
    ]
    client = subprocess.Popen(
        command_line, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert client.stdin is not None and client.stdout is not None
    received = b""

    def found(wanted: bytes) -> bool:
        if wanted is KEY_UPDATE_SENT:  # the client's KeyUpdate, in -msg's trace
            return re.search(rb"^>>> .*KeyUpdate", received, re.M) is not None
        return wanted in received

    def wait_for(wanted: bytes) -> None:
        nonlocal received
        assert client.stdout is not None
        deadline = time.monotonic() + 20
        while not found(wanted) and time.monotonic() < deadline:
            ready, _, _ = select.select([client.stdout], [], [], 0.5)
            if ready:
                chunk = os.read(client.stdout.fileno(), 65536)
                if not chunk:
                    return
                received += chunk

    try:
        wait_for(b"server ready")
        for line, answer in steps:
            client.stdin.write(line)
            client.stdin.flush()
            wait_for(answer)
            assert found(answer), (line, received.decode(errors="replace"))
        out, _ = client.communicate(timeout=30)
        out = received + out
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    text = out.decode(errors="replace")
    assert re.search(r"^>>> .*KeyUpdate", text, re.M), text  # the client sent one
    updates_received = [m.start() for m in re.finditer(r"^<<< .*KeyUpdate", text, re.M)]
    assert len(updates_received) == (1 if command == "K" else 0), text
    # "prior to sending its next Application Data record" (4.6.3): before STAT's answer
    assert all(where < text.index("+OK 7 ") for where in updates_received), text
    assert re.search(r"^\+OK 7 \d+\r?$", text, re.M), text  # STAT under the new keys
    assert "+OK Logging out" in text, text
    assert "security layer" not in served.log()
