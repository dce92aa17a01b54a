from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.lab import Lab, Server, start_server


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return Lab(tmp_path / "lab").create()


@pytest.fixture
def tls_lab(tmp_path: Path) -> Lab:
    return Lab(tmp_path / "lab").create(with_tls=True)


@pytest.fixture
def server(lab: Lab) -> Iterator[Server]:
    running = start_server(lab)
    yield running
    running.stop()
