"""Passwords compared in their SASLprep form (RFC 4616 §2, RFC 4013): one password, however
the client spells it, for USER/PASS and AUTH PLAIN as for SCRAM; hashes stored before
``passwd`` prepared them keep working; an unknown user costs what a wrong password costs."""

from __future__ import annotations

import base64
import socket
from pathlib import Path

import pytest

from pop3d.auth import authenticator as authenticator_module
from pop3d.auth import credentials
from pop3d.auth import passwords as passwords_module
from pop3d.auth.authenticator import Authenticator
from pop3d.auth.credentials import CredentialFile, UserRecord
from pop3d.auth.passwords import hash_password, password_forms
from pop3d.security.secret import Secret
from tests.support.lab import FAST_ARGON2, Lab, start_server

# U+2168 ROMAN NUMERAL NINE is "IX" after NFKC; U+00A0 NO-BREAK SPACE maps to a space
# (RFC 4013 §2.1); U+00AD SOFT HYPHEN maps to nothing (RFC 3454 B.1).
TYPED = "\u2168 no\u00a0break\u00ad"
PREPARED = "IX no break"
# Already its own SASLprep form, yet not ASCII: one form, as sent
NFC_ALREADY = "pässwörd"


def _authenticator(lab: Lab) -> Authenticator:
    # no verification cache: every check below hashes
    return Authenticator(CredentialFile(lab.credentials), FAST_ARGON2, cache_ttl=0)


def _checks(auth: Authenticator, user: str, password: str) -> bool:
    return auth.verify_password(user, Secret(password.encode())).ok


def test_the_forms_tried() -> None:
    assert [f.reveal() for f in password_forms(Secret(TYPED.encode()))] == [
        PREPARED.encode(),
        TYPED.encode(),
    ]
    for one in ("secret", NFC_ALREADY, "bell\u0007", PREPARED):
        assert [f.reveal() for f in password_forms(Secret(one.encode()))] == [one.encode()]
    assert [f.reveal() for f in password_forms(Secret(b"\xff\xfe"))] == [b"\xff\xfe"]


def test_a_password_past_rfc_4616s_255_octets_is_not_prepared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SASLprep runs in Python over what NFKC makes of the password (U+FDFA is 18
    characters): 64 KiB of it in an AUTH PLAIN answer cost 0.7 s of the hashing thread per
    attempt (found probing). Past 255 octets the password is tried as sent, unprepared."""
    prepared: list[str] = []
    real = passwords_module.saslprep

    def counted(text: str) -> str:
        prepared.append(text)
        return real(text)

    monkeypatch.setattr(passwords_module, "saslprep", counted)
    at_the_bound = ("\ufdfa" * 85).encode()  # 255 octets
    assert len(password_forms(Secret(at_the_bound))) == 2 and len(prepared) == 1
    past_it = ("\ufdfa" * 86).encode()
    assert [f.reveal() for f in password_forms(Secret(past_it))] == [past_it]
    assert [f.reveal() for f in password_forms(Secret(past_it * 200))] == [past_it * 200]
    assert len(prepared) == 1


def test_a_password_stored_by_passwd_matches_every_spelling(lab: Lab) -> None:
    lab.set_password("carol", TYPED)
    auth = _authenticator(lab)
    for spelling in (TYPED, PREPARED, "IX no\u00a0break", "\u2168 no break"):
        assert _checks(auth, "carol", spelling), spelling
    assert not _checks(auth, "carol", "IX no break!")
    assert not _checks(auth, "carol", "ix no break")


def test_a_hash_stored_before_passwd_prepared_still_matches(lab: Lab) -> None:
    legacy = {"ARGON2ID": hash_password(Secret(TYPED.encode()), FAST_ARGON2)}
    credentials.update(lab.credentials, "dave", lambda _old: UserRecord("dave", legacy))
    auth = _authenticator(lab)
    assert _checks(auth, "dave", TYPED)
    # what was hashed is the string as typed then: another spelling cannot be told from it
    assert not _checks(auth, "dave", PREPARED)


def test_an_unknown_user_costs_as_many_hashes_as_a_wrong_password(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No time asserted: the Argon2id runs are counted (the real function, wrapped)."""
    lab.set_password("carol", TYPED)
    auth = _authenticator(lab)
    runs: list[bytes] = []
    real = authenticator_module.verify_password

    def counted(password: Secret, phc: str) -> bool:
        runs.append(password.reveal())
        return bool(real(password, phc))

    monkeypatch.setattr("pop3d.auth.authenticator.verify_password", counted)
    cost = {}
    for user in ("carol", "nobody-here"):
        runs.clear()
        assert not _checks(auth, user, "\u2168 wrong\u00a0one")
        cost[user] = list(runs)
    both_forms = [b"IX wrong one", "\u2168 wrong\u00a0one".encode()]
    assert cost["carol"] == cost["nobody-here"] == both_forms


def _login(port: int, lines: list[bytes]) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        sock.sendall(b"".join(line + b"\r\n" for line in lines))
        return [reader.readline() for _ in lines]


def test_user_pass_and_auth_plain_take_either_spelling(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "lab").create()
    lab.set_password("carol", TYPED)
    lab.reset_maildrop("carol")
    server = start_server(lab)
    try:
        for spelling in (TYPED, PREPARED):
            typed = spelling.encode()
            answers = _login(server.port, [b"USER carol", b"PASS " + typed, b"QUIT"])
            assert [a[:3] for a in answers] == [b"+OK"] * 3, (spelling, answers)
            blob = base64.b64encode(b"\0carol\0" + typed)
            answers = _login(server.port, [b"AUTH PLAIN " + blob, b"QUIT"])
            assert [a[:3] for a in answers] == [b"+OK"] * 2, (spelling, answers)
        answers = _login(server.port, [b"USER carol", b"PASS IX no break!", b"QUIT"])
        assert answers[1].startswith(b"-ERR"), answers
    finally:
        server.stop()
