"""Shared fixtures: the seed every randomised test prints, and a proxied single-server KV;
and the Hypothesis settings every property test runs under."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest
import trio
from hypothesis import settings

from tests.kvtest import SingleKV, start_single_kv
from trioraft.testing import RELIABLE, Network, deterministic_scheduling

# No deadline per example: on a busy machine an example that took 300 ms instead of 30
# failed as DeadlineExceeded (or "Flaky"), which says nothing about the code. A failure
# prints the blob that replays it.
settings.register_profile("trioraft", deadline=None, print_blob=True)
settings.load_profile("trioraft")


@pytest.fixture
def seed() -> int:
    """The test's seed: from TRIORAFT_SEED if set, else fresh. Printed, so a failure shows it."""
    env = os.environ.get("TRIORAFT_SEED")
    value = int(env) if env else random.SystemRandom().randrange(2**32)
    print(f"seed={value}  (replay: TRIORAFT_SEED={value} pytest ...)")
    return value


@pytest.fixture
def rng(seed: int) -> random.Random:
    return random.Random(seed)


@pytest.fixture
def network(seed: int) -> Network:
    return Network(seed, RELIABLE)


@pytest.fixture
async def single_kv(nursery: trio.Nursery, network: Network) -> SingleKV:
    return await start_single_kv(nursery, network)


@pytest.fixture
def seeded_scheduler(seed: int) -> Iterator[None]:
    """Schedule Trio from the test's seed too (``trioraft.testing.deterministic_scheduling``),
    so a virtual-time run replays from its seed: our decisions and the interleavings."""
    with deterministic_scheduling(seed):
        yield


@pytest.fixture
async def make_kv_cluster(nursery: trio.Nursery, seed: int, tmp_path):
    """Start replicated KV clusters; their clerks are closed at teardown, pass or fail."""
    from tests.kv_cluster import KVCluster

    made: list[KVCluster] = []

    async def make(n: int, **kwargs) -> KVCluster:
        cluster = KVCluster(nursery, n, seed, tmp_path / f"cluster-{len(made)}", **kwargs)
        made.append(cluster)
        await cluster.start_all()
        return cluster

    yield make
    for cluster in made:
        await cluster.close()
