"""The replicated KV (catalogue §8, the C port's and the seed's lists, Janus §13): real
servers over real HTTP through fault proxies; every recorded history is checked."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.kv_cluster import KVCluster
from trioraft import VersionConflict, Versioned


async def test_basic_put_get_append_and_failover(
    nursery: trio.Nursery, seed: int, tmp_path: Path
) -> None:
    c = KVCluster(nursery, 3, seed, tmp_path)
    await c.start_all()
    ck = c.clerk()
    assert await ck.get("a") == Versioned("", 0)
    await ck.put("a", "1", 0)
    await ck.append("a", "2")
    assert await ck.get("a") == Versioned("12", 2)
    try:
        await ck.put("a", "x", 0)
        raise AssertionError("a stale put succeeded")
    except VersionConflict:
        pass
    leader = c.leader()
    assert leader is not None
    await c.stop(leader)
    await ck.put("a", "3", 2)
    assert await ck.get("a") == Versioned("3", 3)
    await c.start(leader)
    await c.close()
