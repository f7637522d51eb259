"""The lease lock's recipe on virtual time, over an in-memory KV that keeps leases honestly.

The fake expires a lease when its TTL passes without a keepalive (on the same clock), deletes
its keys and wakes watchers, as the replicated KV does through its log. A guarded resource
refuses a token lower than one it has seen, so two holders overlapping would show.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trioraft.kv.lease_lock import Contender, LockLost, elect, lease_lock


class FakeLeaseKV:
    def __init__(self) -> None:
        self.index = 0
        self.keys: dict[str, tuple[int, int]] = {}  # key -> (create_index, lease)
        self.deadlines: dict[int, float] = {}
        self.ttls: dict[int, int] = {}
        self.changed = trio.Event()
        self.keepalive_fails = False
        self.next_lease = 0

    def _tick(self) -> None:
        self.index += 1
        self.changed.set()
        self.changed = trio.Event()

    def expire(self) -> None:
        now = trio.current_time()
        for lease, deadline in sorted(self.deadlines.items()):
            if deadline <= now:
                self._revoke(lease)

    def _revoke(self, lease: int) -> None:
        self.deadlines.pop(lease, None)
        for key in sorted(k for k, (_, owner) in self.keys.items() if owner == lease):
            del self.keys[key]
        self._tick()

    async def lease_grant(self, ttl: int) -> int:
        self.next_lease += 1
        self.ttls[self.next_lease] = ttl
        self.deadlines[self.next_lease] = trio.current_time() + ttl
        self._tick()
        return self.next_lease

    async def lease_keepalive(self, lease: int) -> None:
        self.expire()
        if self.keepalive_fails or lease not in self.deadlines:
            raise KeyError(lease)
        self.deadlines[lease] = trio.current_time() + self.ttls[lease]

    async def lease_revoke(self, lease: int) -> None:
        self._revoke(lease)

    async def create(self, key: str, value: str, *, lease: int) -> int:
        self.expire()
        if lease not in self.deadlines:
            raise KeyError(lease)
        if key not in self.keys:
            self._tick()
            self.keys[key] = (self.index, lease)
        return self.keys[key][0]

    async def contenders(self, prefix: str) -> tuple[list[Contender], int, int]:
        self.expire()
        found = [Contender(k, c) for k, (c, _) in self.keys.items() if k.startswith(prefix)]
        return sorted(found, key=lambda c: (c.create_index, c.key)), self.index, self.index

    async def wait_deleted(self, key: str, *, after: int) -> None:
        while key in self.keys:
            with trio.move_on_after(0.1):  # the fake's expiry is checked as time passes
                await self.changed.wait()
            self.expire()


class Resource:
    """Refuses a write with a token lower than the highest it has seen."""

    def __init__(self) -> None:
        self.highest = 0
        self.holders = 0
        self.log: list[int] = []

    async def use(self, token: int) -> None:
        assert token >= self.highest, f"stale token {token} after {self.highest}"
        self.highest = token
        self.holders += 1
        assert self.holders == 1, "two holders at once"
        self.log.append(token)
        await trio.sleep(0.5)
        self.holders -= 1


async def test_holders_never_overlap_tokens_grow_and_waiters_go_in_order(autojump_clock):
    kv, resource = FakeLeaseKV(), Resource()
    order: list[int] = []

    async def contender(i: int) -> None:
        await trio.sleep(i * 0.01)  # ask in the order of i
        async with lease_lock(kv, "job", ttl=5) as token:
            order.append(i)
            await resource.use(token)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(contender, i)
    assert order == list(range(6))
    assert resource.log == sorted(resource.log) and len(set(resource.log)) == 6
    assert kv.keys == {}  # every lease revoked on the way out


async def test_a_body_longer_than_the_ttl_keeps_the_lock(autojump_clock):
    kv = FakeLeaseKV()
    with trio.fail_after(120):
        async with lease_lock(kv, "long", ttl=3) as token:
            await trio.sleep(30)  # ten TTLs, kept alive throughout
            contenders, _, as_of = await kv.contenders("")
            assert len(contenders) == 1 and token <= as_of


async def test_a_holder_that_cannot_renew_is_cancelled_before_its_lease_expires(
    autojump_clock,
):
    kv = FakeLeaseKV()
    stopped_at: list[float] = []
    with trio.fail_after(60), pytest.raises(LockLost):
        async with lease_lock(kv, "cut", ttl=4):
            granted = trio.current_time()
            kv.keepalive_fails = True  # cut off from the majority, say
            try:
                await trio.sleep_forever()
            finally:
                stopped_at.append(trio.current_time())
    deadline_anywhere = granted + 4
    assert stopped_at[0] < deadline_anywhere


async def test_a_crashed_holder_frees_the_lock_within_its_ttl(autojump_clock):
    kv = FakeLeaseKV()
    acquired_at: list[float] = []

    async def crashed_holder() -> None:
        lease = await kv.lease_grant(3)
        await kv.create("\x00lock/x/dead", "", lease=lease)
        # and never renews, never revokes: it crashed

    with trio.fail_after(60):
        await crashed_holder()
        start = trio.current_time()
        async with lease_lock(kv, "x", ttl=3):
            acquired_at.append(trio.current_time())
    assert acquired_at[0] - start <= 3 + 0.2


async def test_elect_runs_one_leader_at_a_time(autojump_clock):
    kv = FakeLeaseKV()
    terms: list[int] = []
    inside = 0

    async def candidate(name: str) -> None:
        nonlocal inside
        async with elect(kv, "svc", candidate=name) as term:
            inside += 1
            assert inside == 1
            terms.append(term)
            await trio.sleep(1)
            inside -= 1

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for name in "abc":
                nursery.start_soon(candidate, name)
    assert terms == sorted(terms) and len(terms) == 3


async def test_an_error_in_the_body_comes_out_as_itself_and_frees_the_lock(autojump_clock):
    kv = FakeLeaseKV()
    with trio.fail_after(10), pytest.raises(ValueError, match="boom"):
        async with lease_lock(kv, "e", ttl=3):
            raise ValueError("boom")
    assert kv.keys == {} and kv.deadlines == {}
