"""The service's garbage-collector settings (why: kingest/runtime/service.py GC_THRESHOLDS)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from kingest.runtime.service import GC_THRESHOLDS, tune_garbage_collector


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_start_up_objects_are_frozen_and_collections_are_spaced_out() -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    tune_garbage_collector()
    assert gc.get_freeze_count() > 0  # the modules imported so far are never traversed again
    assert gc.get_threshold() == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] > 10_000  # a young collection no more than every 10k allocations
    assert gc.isenabled()  # cycles from error paths are still collected
