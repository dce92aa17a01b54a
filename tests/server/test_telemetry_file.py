"""The telemetry file writer alone (pop3d/server/telemetry.py): names, markers, the bound on
the pre-login record, user names that are not one path component."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from pop3d.server.telemetry import PRELOGIN_LIMIT, Telemetry, TelemetrySettings


def _settings(tmp_path: Path, **extra: bool) -> TelemetrySettings:
    return TelemetrySettings(directory=tmp_path / "log", service="pop3s", **extra)


def test_nothing_without_the_directory_and_no_directory_made(tmp_path: Path) -> None:
    (tmp_path / "log").mkdir()
    telemetry = Telemetry(_settings(tmp_path, prelogin=True), "sid")
    telemetry.pieces([(False, b"+OK ready\r\n")])
    assert not telemetry.login("alice")
    telemetry.pieces([(True, b"QUIT\r\n")])
    telemetry.close()
    assert list((tmp_path / "log").iterdir()) == []


@pytest.mark.parametrize("user", ["..", ".", "a/b", "a\0b", ""])
def test_a_user_name_that_is_not_one_path_component_is_not_recorded(
    tmp_path: Path, user: str
) -> None:
    (tmp_path / "log" / "a").mkdir(parents=True)
    telemetry = Telemetry(_settings(tmp_path), "sid")
    assert telemetry.path_for(user) is None
    assert not telemetry.login(user)


@pytest.mark.parametrize("kind", ["link", "dangling link", "fifo"])
def test_a_user_directory_that_is_a_link_is_not_followed(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Found probing: log/<user> as a symbolic link was followed (O_NOFOLLOW covered the
    file's own name), and the session, mail included, written where the link pointed."""
    (tmp_path / "log").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = tmp_path / "log" / "bob"
    if kind == "link":
        where.symlink_to(elsewhere)
    elif kind == "dangling link":
        where.symlink_to(tmp_path / "nowhere")
    else:
        os.mkfifo(where)
    telemetry = Telemetry(_settings(tmp_path, prelogin=True), "sid")
    telemetry.pieces([(False, b"+OK ready\r\n")])
    assert not telemetry.login("bob")
    telemetry.pieces([(False, b"+OK 1 2\r\n")])
    telemetry.close()
    assert list(elsewhere.iterdir()) == [] and not (tmp_path / "nowhere").exists()
    [record] = caplog.records
    assert record.getMessage() == (
        f"session sid: telemetry log {where} cannot be opened (not a directory; a symbolic "
        "link is not followed); not recording"
    )


def test_names_and_markers(tmp_path: Path) -> None:
    (tmp_path / "log" / "bob@example.org").mkdir(parents=True)
    telemetry = Telemetry(_settings(tmp_path), "lab/x-1-2")
    assert telemetry.login("bob@example.org")
    telemetry.pieces([(False, b"+OK in\r\n"), (True, b"STAT\r\n"), (True, b"NOOP\r\n")])
    telemetry.server(b"+OK 1 2\r\n")
    telemetry.server(b"+OK\r\n")
    telemetry.close()
    [path] = (tmp_path / "log" / "bob@example.org").iterdir()
    assert path.name == f"pop3s-{os.getpid()}-lab_x-1-2"
    text = path.read_bytes()
    body = re.sub(rb"\d{10}", b"T", text.split(b"\n\n", 1)[1])
    assert body == b">T>+OK in\r\n<T<STAT\r\nNOOP\r\n>T>+OK 1 2\r\n+OK\r\n"
    by_sid = Telemetry(_settings(tmp_path, by_session_id=True), "sid-9")
    assert by_sid.path_for("bob") == tmp_path / "log" / "bob" / "pop3s-sid-9"


def test_the_prelogin_record_is_bounded(tmp_path: Path) -> None:
    (tmp_path / "log" / "bob").mkdir(parents=True)
    telemetry = Telemetry(_settings(tmp_path, prelogin=True), "sid")
    telemetry.pieces([(False, b"+OK ready\r\n")])
    for _ in range(PRELOGIN_LIMIT // 1000 + 10):
        telemetry.pieces([(True, b"CAPA" + b"x" * 994 + b"\r\n")])
    telemetry.pieces([(True, b"NOOP\r\n")])  # small, but after the cut: counted, not kept
    assert telemetry.login("bob")
    telemetry.pieces([(False, b"+OK locked\r\n")])
    telemetry.close()
    [path] = (tmp_path / "log" / "bob").iterdir()
    data = path.read_bytes()
    assert len(data) < PRELOGIN_LIMIT + 1000
    assert b"NOOP" not in data
    assert re.search(rb"\n---------- \d+ octets before login not recorded", data)
    assert data.endswith(b">+OK locked\r\n")
