"""Two lease-lock contenders whose keys are created in one log entry (known bug, xfail).

The leader packs ops from concurrent requests into one entry, so two contenders' keys can
share a ``create_index``; ``lease_lock`` orders contenders by ``create_index`` alone, so both
find no one before them, hold the lock at once, and get the same fencing token. A
coalescing client shared by two tasks makes the tie likely; ten rounds make it all but
certain. A fix: order contenders by ``(create_index, key)`` in ``_wait_for_turn``, and give
as token something unique per holder (e.g. the index of the read at which the holder found
no one before it, which is past every earlier holder's delete). Then remove the xfail.
"""

from __future__ import annotations

import pytest
import trio

from trioraft import lease_lock
from trioraft.kv.coalescing import open_coalescing_client
from trioraft.kv.node import run_local_cluster

pytestmark = pytest.mark.xdist_group("http-cluster")


@pytest.mark.xfail(reason="lease_lock: contenders created in one entry tie on create_index")
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
                    if len(set(tokens)) < 2:
                        ties.append(f"res-{round_}: one token for two holders {tokens}")
            nursery.cancel_scope.cancel()
    assert not ties, "\n".join(ties)
