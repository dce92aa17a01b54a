"""The worker's collector settings (server/worker.py tune_collector): start-up objects
frozen out of full collections, young collections rarer; cycles made later still go."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from pop3d.server.worker import YOUNG_COLLECTION_THRESHOLD, tune_collector


@pytest.fixture
def restored_collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


class _Node:
    def __init__(self) -> None:
        self.peer: _Node | None = None


def test_start_up_objects_are_frozen_and_young_collections_rarer(
    restored_collector: None,
) -> None:
    before = gc.get_freeze_count()
    frozen = tune_collector()
    assert frozen > before
    assert frozen == gc.get_freeze_count()
    assert gc.get_threshold()[0] == YOUNG_COLLECTION_THRESHOLD


def test_a_cycle_made_after_the_freeze_is_still_collected(restored_collector: None) -> None:
    tune_collector()
    first, second = _Node(), _Node()
    first.peer, second.peer = second, first
    gone = weakref.ref(first)
    del first, second
    gc.collect()
    assert gone() is None
