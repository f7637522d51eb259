"""Garbage-collector settings for a process whose main job is serving trioraft.

CPython's collector runs a young-generation pass every 700 net container allocations. A busy
node always has many tasks' frames, events and messages alive, so each pass promotes them to
the older generations, whose passes then walk everything the process holds: on a 3-node
cluster at 11,000 embedded ops/s, collection took about a quarter of the leader's CPU, with
pauses up to 130 ms (measured with ``gc.callbacks``).

:func:`tune_gc` freezes what exists so far (modules, configuration: never garbage) out of
every future pass, and raises the young threshold so that per-request objects are freed by
reference counting before a pass sees them. Only cyclic garbage waits longer.

Invariant: the library never calls it on import (it changes process-wide settings); a
process's main calls it once, after startup, as the ``trioraft`` server commands (``node``,
``cluster``, ``kvserver``) and the benchmark nodes do.
"""

from __future__ import annotations

import gc

#: Net container allocations between young-generation passes (CPython's default: 700).
YOUNG_THRESHOLD = 50_000
#: Young passes between middle-generation passes (default 10).
MIDDLE_THRESHOLD = 20


def tune_gc() -> None:
    """Freeze the objects alive now and make young-generation passes rarer."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, gc.get_threshold()[2])
