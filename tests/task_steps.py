"""Counting task steps: how often the scheduler wakes the tasks of interest."""

from __future__ import annotations

from collections.abc import Callable

import trio


class TaskSteps(trio.abc.Instrument):
    """Counts the steps (wake-ups) of every task whose name ``counts`` accepts."""

    def __init__(self, counts: Callable[[str], bool]) -> None:
        self.counts = counts
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.counts(task.name):
            self.steps += 1
