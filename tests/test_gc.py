"""tune_gc: the collector settings a serving process adopts (restored after the test)."""

from __future__ import annotations

import gc

from trioraft import tune_gc
from trioraft._gc import MIDDLE_THRESHOLD, YOUNG_THRESHOLD


def test_tune_gc_freezes_startup_objects_and_raises_young_threshold() -> None:
    before = gc.get_threshold()
    gc.unfreeze()
    try:
        tune_gc()
        assert gc.get_threshold() == (YOUNG_THRESHOLD, MIDDLE_THRESHOLD, before[2])
        assert gc.get_freeze_count() > 1000  # this test process's modules, at least
        frozen = gc.get_freeze_count()
        garbage = [[]]
        garbage[0].append(garbage)  # a cycle only the collector can free
        del garbage
        assert gc.collect() >= 1  # collection still works on what came after
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
