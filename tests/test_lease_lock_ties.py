"""Two lease-lock contenders whose keys are created in one log entry take turns.

The leader packs ops from concurrent requests into one entry, so two contenders' keys can
share a ``create_index`` (a coalescing client shared by two tasks makes it likely; ten rounds
all but certain). They must still hold the lock one after the other, with strictly growing
fencing tokens (docs/scenarios.md: lease-lock). Ordering by ``create_index`` alone, with it as
the token, let both in at once with one token.
"""

from __future__ import annotations

import pytest
import trio

from trioraft import lease_lock
from trioraft.kv.coalescing import open_coalescing_client
from trioraft.kv.node import run_local_cluster

pytestmark = pytest.mark.xdist_group("http-cluster")


async def test_contenders_created_in_one_entry_take_turns(tmp_path) -> None:
    ties: list[str] = []
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(
                lambda task_status: run_local_cluster(3, tmp_path, task_status=task_status)
            )
            async with open_coalescing_client(urls) as kv:
                for round_ in range(10):
                    inside: list[str] = []
                    tokens: list[int] = []

                    async def holder(
                        name: str, lock: str, inside: list[str], tokens: list[int]
                    ) -> None:
                        async with lease_lock(kv, lock, ttl=5, holder=name) as token:
                            inside.append(name)
                            tokens.append(token)
                            if len(inside) > 1:
                                ties.append(f"{lock}: {inside} at once, tokens {tokens}")
                            await trio.sleep(0.05)
                            inside.remove(name)

                    async with trio.open_nursery() as holders:
                        for name in "ab":
                            holders.start_soon(holder, name, f"res-{round_}", inside, tokens)
                    if not tokens[0] < tokens[1]:
                        ties.append(f"res-{round_}: tokens {tokens} do not grow")
            nursery.cancel_scope.cancel()
    assert not ties, "\n".join(ties)
