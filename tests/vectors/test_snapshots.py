"""Every regression snapshot in vectors/snapshots/, replayed byte-exact through ``pop3d -X`` and
through the network driver (a real pop3d-master), each fed whole and one byte at a time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import transcript
from tests.support.lab import Lab, Server, start_server

PATHS = transcript.all_transcripts()
IDS = [p.stem for p in PATHS]
# -X serves exactly one session, so only single-session transcripts run through it.
SINGLE = [p for p in PATHS if transcript.load(p).sessions == {1}]


def test_there_are_transcripts() -> None:
    assert len(PATHS) >= 30
    names = set(IDS)
    assert {"rfc1939_example", "rfc2449_capa", "pipelined"} <= names


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, ...], Server]]:
    running: dict[tuple[str, ...], Server] = {}
    yield running
    for server in running.values():
        server.stop()


def _server_for(
    parsed: transcript.Transcript,
    servers: dict[tuple[str, ...], Server],
    tmp_path_factory: pytest.TempPathFactory,
) -> Server:
    key = tuple(parsed.config)
    if key not in servers:
        root = tmp_path_factory.mktemp("transcript-lab")
        lab = Lab(root / "lab", extra_config="".join(f"{line}\n" for line in key)).create()
        servers[key] = start_server(lab)
    server = servers[key]
    for user in server.lab.users:
        server.lab.reset_maildrop(user)
    return server


@pytest.mark.parametrize("byte_at_a_time", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_replay_over_tcp(
    path: Path,
    byte_at_a_time: bool,
    servers: dict[tuple[str, ...], Server],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    parsed = transcript.load(path)
    server = _server_for(parsed, servers, tmp_path_factory)
    transcript.replay_tcp(parsed, server.port, byte_at_a_time)


@pytest.mark.parametrize("byte_at_a_time", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("path", SINGLE, ids=[p.stem for p in SINGLE])
def test_replay_through_stdio(path: Path, byte_at_a_time: bool, tmp_path: Path) -> None:
    parsed = transcript.load(path)
    lab = Lab(tmp_path / "lab", extra_config="".join(f"{line}\n" for line in parsed.config))
    lab.create()
    transcript.replay_stdio(parsed, lab.pop3d_x(), byte_at_a_time)


def test_a_wrong_expectation_fails(tmp_path: Path) -> None:
    """The replayer itself must be able to fail: one changed byte is caught."""
    lab = Lab(tmp_path / "lab").create()
    source = (transcript.TRANSCRIPTS / "stat_list_uidl.txt").read_text()
    broken = tmp_path / "broken.txt"
    broken.write_text(source.replace("S: +OK 7 28700", "S: +OK 7 28701", 1))
    with pytest.raises(transcript.TranscriptError, match="28700"):
        transcript.replay_stdio(transcript.load(broken), lab.pop3d_x())


def test_loader_is_strict(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("C: NOOP\nX: what\n")
    with pytest.raises(transcript.TranscriptError, match="bad.txt:2"):
        transcript.load(bad)
