"""curl's POP3 client against a real pop3d-master: LIST, RETR, UIDL, TOP and DELE, APOP (what
curl picks when the greeting carries a challenge and no SASL is offered) and USER/PASS, STLS
and POP3S, and the exit code of a failed login.

curl prints a multi-line answer without its terminating "." line and with the dot-stuffing
undone, so RETR output is the stored message in canonical (CRLF) form. With ``-v`` it shows
the commands it sends ("> ...") on stderr."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.interop.conftest import ALICE_SIZES, Served, canonical, run, uid
from tests.support.lab import make_certificates

pytestmark = pytest.mark.interop

LOGIN_FAILED = 67  # CURLE_LOGIN_DENIED
SSL_REQUIRED_FAILED = 64  # CURLE_USE_SSL_FAILED
PEER_FAILED_VERIFICATION = 60
LISTING = b"".join(f"{n} {size}\r\n".encode() for n, size in enumerate(ALICE_SIZES, 1))


def curl(url: str, *args: str, user: str = "alice:wonderland") -> tuple[int, bytes, str]:
    done = run(["curl", "-sS", "-v", "--max-time", "20", url, "-u", user, *args])
    return done.returncode, done.stdout, done.stderr.decode(errors="replace")


def sent(stderr: str) -> list[str]:
    """The commands curl sent, from its -v trace."""
    return [line[2:] for line in stderr.splitlines() if line.startswith("> ")]


def test_list_with_sasl_plain_by_default(served: Served) -> None:
    """curl prefers SASL to APOP and USER; of what is offered in clear it can do PLAIN."""
    code, out, err = curl(f"pop3://127.0.0.1:{served.port}/")
    assert code == 0, err
    assert out == LISTING
    commands = sent(err)
    assert commands[0] == "CAPA"
    # the server offers STLS, but curl uses it only when asked to (--ssl, --ssl-reqd)
    assert "STLS" not in commands
    # no initial response: curl waits for the empty "+ " challenge (RFC 5034 §4)
    assert commands[1:4] == ["AUTH PLAIN", "AGFsaWNlAHdvbmRlcmxhbmQ=", "LIST"]
    assert "< + " in err.splitlines()
    assert "USER alice" not in commands
    assert "] alice PLAIN" in served.log()


def test_apop_when_asked(served: Served) -> None:
    code, out, err = curl(f"pop3://127.0.0.1:{served.port}/", "--login-options", "AUTH=+APOP")
    assert code == 0, err
    assert out == LISTING
    commands = sent(err)
    assert commands[1].startswith("APOP alice ")
    assert len(commands[1].split()[2]) == 32
    assert "] alice APOP" in served.log()


def test_user_pass_when_apop_is_off(served_without_apop: Served) -> None:
    code, out, err = curl(f"pop3://127.0.0.1:{served_without_apop.port}/")
    assert code == 0, err
    assert out == LISTING
    assert sent(err)[:4] == ["CAPA", "USER alice", "PASS wonderland", "LIST"]
    assert "< +OK User name accepted, password please" in err
    assert "] alice plaintext" in served_without_apop.log()


def test_retr_every_message(served: Served) -> None:
    for number, path in enumerate(served.lab.messages("alice"), 1):
        code, out, err = curl(f"pop3://127.0.0.1:{served.port}/{number}")
        assert code == 0, err
        assert f"RETR {number}" in sent(err)
        assert out == canonical(path), number
        assert len(out) == ALICE_SIZES[number - 1]


def test_retr_message_with_leading_dots(served: Served) -> None:
    code, out, err = curl(f"pop3://127.0.0.1:{served.port}/2")
    assert code == 0, err
    assert out == canonical(served.lab.messages("alice")[1])
    assert b"\r\n\r\n.\r\n..\r\n.leading dot\r\n..two leading dots\r\n .space dot\r\n" in out


def test_uidl(served: Served) -> None:
    code, out, err = curl(f"pop3://127.0.0.1:{served.port}/", "-X", "UIDL")
    assert code == 0, err
    expected = [f"{n} {uid(path)}" for n, path in enumerate(served.lab.messages("alice"), 1)]
    assert out == "".join(line + "\r\n" for line in expected).encode()
    assert out.startswith(b"1 1700000001.M1P1.lab\r\n")


def test_top_headers_only(served: Served) -> None:
    code, out, err = curl(f"pop3://127.0.0.1:{served.port}/", "-X", "TOP 1 0")
    assert code == 0, err
    stored = canonical(served.lab.messages("alice")[0])
    headers = stored[: stored.index(b"\r\n\r\n") + 4]
    assert out == headers
    assert out.endswith(b"Content-Transfer-Encoding: 7bit\r\n\r\n")


def test_dele_removes_the_file_once_curl_has_quit(served: Served) -> None:
    first, second, third = served.lab.messages("bob")
    code, out, err = curl(
        f"pop3://127.0.0.1:{served.port}/1", "-X", "DELE", "-I", user="bob:builder"
    )
    assert code == 0, err
    assert out == b""
    assert "DELE 1" in sent(err)
    assert "< +OK Message 1 deleted" in err
    assert served.lab.messages("bob") == [second, third]
    assert not first.exists()


def test_wrong_password_exit_67(served: Served, served_without_apop: Served) -> None:
    code, out, err = curl(f"pop3://127.0.0.1:{served.port}/", user="alice:nope")
    assert code == LOGIN_FAILED, err
    assert out == b""
    assert sent(err)[1].startswith("AUTH PLAIN")
    assert "< -ERR [AUTH] Invalid login" in err

    code, out, err = curl(f"pop3://127.0.0.1:{served_without_apop.port}/", user="alice:nope")
    assert code == LOGIN_FAILED, err
    assert "PASS nope" in sent(err)
    assert "< -ERR [AUTH] Invalid login" in err


def test_stls(served: Served) -> None:
    port = served.port
    code, out, err = curl(f"pop3://localhost:{port}/", "--ssl-reqd", "--cacert", str(served.ca))
    assert code == 0, err
    assert out == LISTING
    commands = sent(err)
    assert commands[:2] == ["CAPA", "STLS"]
    # curl asks for the capabilities again inside TLS before logging in
    assert commands[2] == "CAPA"
    assert commands[3].startswith("AUTH PLAIN")
    assert "< +OK Begin TLS negotiation now" in err
    assert "SSL certificate verify ok." in err
    assert "tls=<TLSv1." in served.log()


def test_stls_required_but_not_offered(served_without_apop: Served) -> None:
    """That server has no certificate, so it offers no STLS: curl must give up before
    sending any credential."""
    code, out, err = curl(f"pop3://127.0.0.1:{served_without_apop.port}/", "--ssl-reqd")
    assert code == SSL_REQUIRED_FAILED, err
    assert out == b""
    assert "STLS" not in sent(err)
    assert not any(line.startswith(("APOP", "USER", "PASS")) for line in sent(err))


def test_pop3s(served: Served) -> None:
    port = served.pop3s
    code, out, err = curl(f"pop3s://localhost:{port}/2", "--cacert", str(served.ca))
    assert code == 0, err
    assert out == canonical(served.lab.messages("alice")[1])
    assert "STLS" not in sent(err)
    assert "SSL connection using TLSv1." in err


def test_pop3s_certificate_from_another_ca_is_refused(tmp_path: Path, served: Served) -> None:
    other = make_certificates(tmp_path / "other")
    port = served.pop3s
    code, out, err = curl(f"pop3s://localhost:{port}/", "--cacert", str(other.ca))
    assert code == PEER_FAILED_VERIFICATION, err
    assert out == b""
