"""Unknown users look like the stored population, also after the site changes its hashing
settings (issue 12, finding 2): stored users keep the parameters they were hashed with until
their password changes, so decoys built from the new settings would stand out."""

from __future__ import annotations

import base64
import hmac
import socket
import time
from pathlib import Path

import pytest

from pop3d.auth import credentials
from pop3d.auth.authenticator import Authenticator
from pop3d.auth.credentials import CredentialFile, UserRecord
from pop3d.auth.passwords import Argon2Parameters, hash_password, phc_parameters
from pop3d.security.secret import Secret
from tests.support.lab import FAST_ARGON2, Lab, start_server


def scram_iterations_offered(port: int, user: str) -> int:
    """The i= of the server-first message SCRAM-SHA-256 sends ``user``."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        sock.sendall(b"AUTH SCRAM-SHA-256\r\n")
        assert reader.readline().rstrip() == b"+"
        first = f"n,,n={user},r=clientnonce0123456789".encode()
        sock.sendall(base64.b64encode(first) + b"\r\n")
        line = reader.readline()
        assert line.startswith(b"+ "), line
        fields = dict(item.split("=", 1) for item in base64.b64decode(line[2:]).decode().split(","))
        sock.sendall(b"*\r\n")
        return int(fields["i"])


def test_scram_decoy_iterations_follow_the_stored_users_not_the_setting(tmp_path: Path) -> None:
    # The lab's users were stored with the default 4096 iterations; the site then raised
    # the setting for new passwords.
    lab = Lab(tmp_path / "lab", extra_config="scram_iterations: 8192\n").create()
    server = start_server(lab)
    try:
        real = scram_iterations_offered(server.port, "alice")
        assert real == 4096
        assert scram_iterations_offered(server.port, "nobody") == real
        assert scram_iterations_offered(server.port, "someone.else") == real
    finally:
        server.stop()


def cpu_seconds_of_a_failed_check(auth: Authenticator, user: str, tries: int = 9) -> float:
    """The least CPU time of ``tries`` failed verifications: other processes only add."""
    best = float("inf")
    for _ in range(tries):
        start = time.thread_time()
        assert not auth.verify_password(user, Secret(b"wrong")).ok
        best = min(best, time.thread_time() - start)
    return best


def test_unknown_user_costs_what_a_stored_user_costs_after_argon2_passes_is_raised(
    lab: Lab,
) -> None:
    stored = Argon2Parameters(memory_kib=4096, passes=1)
    for name in ("carol", "dave", "erin"):
        secret = {"ARGON2ID": hash_password(Secret(name.encode()), stored)}
        credentials.update(lab.credentials, name, lambda _old, s=secret, n=name: UserRecord(n, s))
    # carol, dave and erin outnumber the lab's cheap fixtures; the site now asks for 12
    # passes (for passwords set from now on).
    raised = Argon2Parameters(memory_kib=4096, passes=12)
    auth = Authenticator(CredentialFile(lab.credentials), raised)
    assert phc_parameters(auth.decoys().argon2_hash) == stored

    real = cpu_seconds_of_a_failed_check(auth, "carol")
    unknown = cpu_seconds_of_a_failed_check(auth, "nobody")
    # before the fix the unknown user paid 12 passes against the real users' one
    assert 0.6 < unknown / real < 1.6, (real, unknown)


def test_decoys_follow_the_file_when_it_changes(lab: Lab) -> None:
    auth = Authenticator(CredentialFile(lab.credentials), Argon2Parameters(passes=3))
    assert phc_parameters(auth.decoys().argon2_hash) == Argon2Parameters(memory_kib=64, passes=1)
    assert auth.decoys().scram_shape("SCRAM-SHA-256") == (4096, 16)
    lab.credentials.unlink()  # nothing stored: the settings are all there is
    assert phc_parameters(auth.decoys().argon2_hash) == Argon2Parameters(passes=3)
    assert auth.decoys().scram_shape("SCRAM-SHA-256") == (4096, 16)


def test_known_and_unknown_names_get_the_same_hashing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found probing: the SCRAM decoy was made only for unknown names, and its three
    HMAC-SHA512 answered them 50-80 µs later than known ones, before any password, with
    the exchange free to cancel: a user-enumeration oracle. No time is asserted here; the
    hashing itself is counted (the real hmac, wrapped)."""
    lab = Lab(tmp_path / "lab").create()
    authenticator = Authenticator(CredentialFile(lab.credentials), FAST_ARGON2)
    made: list[bytes] = []
    real_new = hmac.new

    def counted(key: bytes, message: bytes, digest: object) -> hmac.HMAC:
        made.append(message)
        return real_new(key, message, digest)  # type: ignore[arg-type]

    monkeypatch.setattr("pop3d.auth.authenticator.hmac.new", counted)
    work = {}
    for user in ("alice", "nobody-at-all"):
        made.clear()
        secrets = authenticator.fetch_secrets(user, ("SCRAM-SHA-256",))
        assert secrets.known == (user == "alice")
        work[user] = len(made)
    assert work["alice"] == work["nobody-at-all"] > 0
