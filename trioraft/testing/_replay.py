"""Exact replay: a virtual-time run that depends on its seed alone, in any process.

What a simulated run (nodes, network and clients in one Trio run on a ``MockClock``) could
depend on besides its seed, and how each is pinned:

- *Decisions*: the network's fates and every node's timeouts come from seeded
  ``random.Random`` objects (:class:`Network`, :class:`RaftCluster`), seeded from strings or
  ints (a ``str`` seed is hashed with SHA-512, not ``hash()``, so ``PYTHONHASHSEED`` does not
  reach it).
- *Time*: virtual (``MockClock(autojump_threshold=0)``); nothing the run decides reads the
  wall clock (``time.perf_counter`` only feeds metrics).
- *Trio's scheduler*: it runs each batch of runnable tasks in an order drawn from its own
  generator (``trio._core._run._r``): :func:`deterministic_scheduling` seeds it.
- *The order tasks became runnable*, which depends on object identity: Trio wakes the
  sleepers of one instant in the order of ``id(cancel_scope)`` (its tie-break between equal
  deadlines), a cancelled scope wakes its tasks in the order of a set of tasks, and the
  network used to cut calls in flight in the order of a set of objects. Trio's own
  deterministic mode (the one it switches on under Hypothesis) sorts every batch by task
  creation order before the seeded shuffle, so the order in which the tasks of one batch
  were woken no longer matters: :func:`deterministic_scheduling` switches it on. (Equal
  deadlines always expire in the same pass, so their tasks share one batch.)

Invariant: inside :func:`deterministic_scheduling` the same seed and the same program give
the same schedule; the previous scheduler state is restored on exit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import trio
import trio.testing

T = TypeVar("T")


@contextmanager
def deterministic_scheduling(seed: int) -> Iterator[None]:
    """Within this block, Trio schedules from ``seed`` alone (see the module docstring)."""
    import trio._core._run as trio_run  # private: Trio offers no public switch

    was_deterministic = trio_run._ALLOW_DETERMINISTIC_SCHEDULING
    saved_state = trio_run._r.getstate()
    trio_run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    trio_run._r.seed(seed)
    try:
        yield
    finally:
        trio_run._ALLOW_DETERMINISTIC_SCHEDULING = was_deterministic  # type: ignore[misc]
        trio_run._r.setstate(saved_state)


def run_simulation(async_fn: Callable[..., Awaitable[T]], *args: object, seed: int) -> T:
    """``trio.run(async_fn, *args)`` on virtual time (time jumps as soon as every task waits),
    scheduled from ``seed``: the same seed replays the same run."""
    with deterministic_scheduling(seed):
        return trio.run(async_fn, *args, clock=trio.testing.MockClock(autojump_threshold=0))
