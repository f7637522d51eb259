"""The leader's side of leases: it alone decides when one expires, and says so through the log.

:class:`LeaseKeeper` runs in every node's nursery but acts only while its node leads. On
becoming leader (each new term) it starts every lease in the state machine at its full TTL
on its own monotonic clock (:class:`~trioraft.kv.leases.LeaseClock`); it learns leases
granted later by looking at the machine at least every :data:`SYNC_INTERVAL`; a keepalive
(confirmed by a read through the leader) renews one. When a lease's deadline passes, the
keeper proposes its revocation (``lease_revoke``, the same op a client sends; up to
:data:`REVOKE_BATCH` leases in one entry), so every replica deletes its keys at the same
index, and watchers see the deletes.

Invariants:
- A lease never expires earlier than ``ttl`` after the leader last renewed it or first saw
  it (a lease is seen at most :data:`SYNC_INTERVAL` after its grant applied here, so it may
  expire that much late, never early).
- Nothing is proposed by a node that does not lead: the proposal fails with the rest of its
  term, and the next leader starts every lease over.
- A lease past its deadline is never renewed (:meth:`LeaseKeeper.renew` says so): its
  revocation is due or under way, so a keepalive that comes late must not say it lives (as
  in etcd, the caller waits for the revocation to apply: :meth:`LeaseKeeper.wait_revoked`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from ..raft.node import RaftNode
from .leases import LeaseClock, LeaseTable

#: How often the leader looks for leases granted since it last looked, in seconds.
SYNC_INTERVAL = 1.0
#: Most expired leases revoked in one log entry (one each made a flood of short leases
#: expire minutes late: about 350 revocations a second).
REVOKE_BATCH = 1000


class LeaseKeeper:
    def __init__(
        self,
        raft: RaftNode,
        leases: Callable[[], LeaseTable],
        revoke: Callable[[list[int]], Awaitable[bool]],
    ) -> None:
        """``leases`` gives the state machine's table; ``revoke(leases)`` proposes their
        revocation (in one entry) and says whether it applied."""
        self.raft = raft
        self._leases = leases
        self._revoke = revoke
        self.clock = LeaseClock()
        self.term = -1  # the term the clock was started in; -1 while not leading
        self.expired = 0  # leases this node revoked on expiry

    def renew(self, lease: int, ttl: int) -> bool:
        """A keepalive confirmed ``lease`` (``ttl`` seconds): push its deadline on. False,
        renewing nothing, if this leader's clock has it past its deadline, or its revocation
        has applied since the keepalive's answer was read: the keepalive must not say it
        lives (:meth:`wait_revoked` tells when to say it is gone)."""
        if self.term == self.raft.term and self.raft.is_leader:
            now = trio.current_time()
            deadline = self.clock.deadlines.get(lease)
            if (deadline is not None and deadline <= now) or lease not in self._leases().leases:
                return False
            self.clock.renew(lease, ttl, now)
        return True

    async def wait_revoked(self, lease: int) -> None:
        """Return once ``lease`` is gone from the state machine, or this node's leadership
        (its term as leader) has ended: its revocation will not come from here."""
        term = self.raft.term
        await self.raft.wait_until(
            lambda raft: (
                lease not in self._leases().leases or not raft.is_leader or raft.term != term
            )
        )

    async def run(self) -> None:
        while True:
            await self.raft.wait_leading()
            term = self.raft.term
            table = self._leases()
            ttls = {lease: entry.ttl for lease, entry in table.leases.items()}
            self.clock.restart_all(ttls, trio.current_time())
            self.term = term
            try:
                await self._lead(term)
            finally:
                self.term = -1

    async def _lead(self, term: int) -> None:
        while self.raft.is_leader and self.raft.term == term:
            now = trio.current_time()
            self._sync(now)
            due = self.clock.expired(now)
            for start in range(0, len(due), REVOKE_BATCH):
                leases = due[start : start + REVOKE_BATCH]
                if await self._revoke(leases):
                    for lease in leases:
                        self.clock.forget(lease)
                    self.expired += len(leases)
                elif not (self.raft.is_leader and self.raft.term == term):
                    return
            wake = now + SYNC_INTERVAL
            deadline = self.clock.next_deadline()
            await trio.sleep_until(wake if deadline is None else min(wake, deadline))

    def _sync(self, now: float) -> None:
        """Start leases granted since the last look; forget those revoked meanwhile."""
        table = self._leases().leases
        for lease in [lease for lease in self.clock.deadlines if lease not in table]:
            self.clock.forget(lease)
        for lease, entry in table.items():
            if lease not in self.clock.deadlines:
                self.clock.renew(lease, entry.ttl, now)
