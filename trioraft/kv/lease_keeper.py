"""The leader's side of leases: it alone decides when one expires, and says so through the log.

:class:`LeaseKeeper` runs in every node's nursery but acts only while its node leads. On
becoming leader (each new term) it starts every lease in the state machine at its full TTL
on its own monotonic clock (:class:`~trioraft.kv.leases.LeaseClock`); it learns leases
granted later by looking at the machine at least every :data:`SYNC_INTERVAL`; a keepalive
(confirmed by a read through the leader) renews one. When a lease's deadline passes, the
keeper proposes its revocation (``lease_revoke``, the same op a client sends), so every
replica deletes its keys at the same index, and watchers see the deletes.

Invariants:
- A lease never expires earlier than ``ttl`` after the leader last renewed it or first saw
  it (a lease is seen at most :data:`SYNC_INTERVAL` after its grant applied here, so it may
  expire that much late, never early).
- Nothing is proposed by a node that does not lead: the proposal fails with the rest of its
  term, and the next leader starts every lease over.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from ..raft.node import RaftNode
from .leases import LeaseClock, LeaseTable

#: How often the leader looks for leases granted since it last looked, in seconds.
SYNC_INTERVAL = 1.0


class LeaseKeeper:
    def __init__(
        self,
        raft: RaftNode,
        leases: Callable[[], LeaseTable],
        revoke: Callable[[int], Awaitable[bool]],
    ) -> None:
        """``leases`` gives the state machine's table; ``revoke(lease)`` proposes its
        revocation and says whether it applied."""
        self.raft = raft
        self._leases = leases
        self._revoke = revoke
        self.clock = LeaseClock()
        self.term = -1  # the term the clock was started in; -1 while not leading
        self.expired = 0  # leases this node revoked on expiry

    def renew(self, lease: int, ttl: int) -> None:
        """A keepalive confirmed ``lease`` (``ttl`` seconds): push its deadline on."""
        if self.term == self.raft.term and self.raft.is_leader:
            self.clock.renew(lease, ttl, trio.current_time())

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
            for lease in self.clock.expired(now):
                if await self._revoke(lease):
                    self.clock.forget(lease)
                    self.expired += 1
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
