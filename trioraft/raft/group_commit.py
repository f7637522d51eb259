"""When the leader fsyncs a batch it wrote: at once, or after a grace in which the
followers may commit it without that fsync (``RaftConfig.leader_sync_grace``).

A batch the followers commit needs no fsync on the leader: it is durable on a majority
without it, and the leader counts itself towards a quorum only up to what it fsynced. But
waiting is worth it only while the followers lately came to hold batches within the grace;
slower peers (over HTTP, say) would make every batch wait in vain. :class:`GroupCommit`
keeps that estimate. Pure: times are arguments.

Invariants:
- The estimate is a moving average over the batches the followers came to hold; a batch
  they never come to hold is forgotten once ``KEPT`` newer ones are timed.
- It decides only how long to wait, never whether to fsync: a batch not committed after
  the wait is fsynced.
"""

from __future__ import annotations

import collections

#: Weight of each new sample in the estimate of the followers' delay.
DELAY_WEIGHT = 0.125
#: Batches timed at once.
KEPT = 64


class GroupCommit:
    """The leader's estimate of how long its followers alone take to hold a batch."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.follower_delay = 0.0
        #: Batches the leader wrote, (last index, when), until followers hold them on a majority.
        self._unvouched: collections.deque[tuple[int, float]] = collections.deque(maxlen=KEPT)

    def new_term(self) -> None:
        self._unvouched.clear()

    def wait_for_followers(self, last: int, now: float, followers_can_commit: bool) -> float:
        """The batch up to ``last`` was written at ``now``: how long to wait for the
        followers to commit it before fsyncing it (0: fsync at once)."""
        if not followers_can_commit:
            return 0.0
        self._unvouched.append((last, now))
        return self.grace if self.follower_delay < self.grace else 0.0

    def followers_hold(self, index: int, now: float) -> None:
        """The followers alone hold the log up to ``index`` on a majority."""
        unvouched = self._unvouched
        while unvouched and unvouched[0][0] <= index:
            _, written = unvouched.popleft()
            self.follower_delay += (now - written - self.follower_delay) * DELAY_WEIGHT
