"""tune_gc: the collector settings a serving process adopts (restored after the test)."""

from __future__ import annotations

import gc
import weakref

from trioraft import tune_gc
from trioraft._gc import MIDDLE_THRESHOLD, YOUNG_THRESHOLD


class Cycle:
    """An object that refers to itself: only the collector can free it."""

    def __init__(self) -> None:
        self.me = self


def test_tune_gc_freezes_startup_objects_and_raises_young_threshold() -> None:
    """What is alive at tune_gc is frozen: a cycle that became garbage after it is never
    collected; collection still frees cycles made later. (The frozen count is not exact:
    a frozen object whose last reference goes, from any thread, is freed and uncounted.)"""
    before = gc.get_threshold()
    gc.unfreeze()
    try:
        frozen_cycle = Cycle()
        tune_gc()
        assert gc.get_threshold() == (YOUNG_THRESHOLD, MIDDLE_THRESHOLD, before[2])
        assert gc.get_freeze_count() > 1000  # this test process's modules, at least
        frozen = gc.get_freeze_count()
        still_frozen = weakref.ref(frozen_cycle)
        del frozen_cycle
        garbage = Cycle()  # made after the freeze
        collected = weakref.ref(garbage)
        del garbage
        assert gc.collect() >= 1
        assert collected() is None  # collection still works on what came after
        assert still_frozen() is not None  # and never reaches what was frozen
        assert gc.get_freeze_count() <= frozen  # nor moves anything into the frozen set
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
