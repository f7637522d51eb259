"""The fault model on virtual time: seeded fates, drops, partitions, crashes, counters."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trioraft.testing import MIT_UNRELIABLE, RELIABLE, UNRELIABLE, Network, Profile


def handler(log: list[str], name: str = "ran", delay: float = 0.0):
    async def send() -> str:
        await trio.sleep(delay)
        log.append(name)
        return "reply"

    return send


def test_same_seed_same_fates() -> None:
    a, b = Network(7, MIT_UNRELIABLE), Network(7, MIT_UNRELIABLE)
    assert [a.draw_fate() for _ in range(200)] == [b.draw_fate() for _ in range(200)]
    c = Network(8, MIT_UNRELIABLE)
    assert [a.draw_fate() for _ in range(50)] != [c.draw_fate() for _ in range(50)]


def test_profiles_drop_at_their_rates() -> None:
    for profile, rate in [(UNRELIABLE, 0.5), (MIT_UNRELIABLE, 0.1)]:
        net = Network(1, profile)
        fates = [net.draw_fate() for _ in range(20_000)]
        assert sum(f.drop_request for f in fates) / len(fates) == pytest.approx(rate, abs=0.02)
        assert sum(f.drop_reply for f in fates) / len(fates) == pytest.approx(rate, abs=0.02)
        assert all(profile.delay[0] <= f.delay <= profile.delay[1] for f in fates)
    reordering = Network(2, MIT_UNRELIABLE.with_long_reordering())
    held = [f.reply_delay for f in (reordering.draw_fate() for _ in range(3000)) if f.reply_delay]
    assert len(held) / 3000 == pytest.approx(2 / 3, abs=0.04)
    assert all(0.2 <= d <= 2.2 for d in held)


async def test_reliable_delivers_and_counts(autojump_clock: trio.testing.MockClock) -> None:
    net = Network(1, RELIABLE)
    log: list[str] = []
    reply = await net.deliver("c", "s", handler(log), request_bytes=10, reply_bytes=len)
    assert (reply, log) == ("reply", ["ran"])
    assert (net.rpc_total, net.rpc_count["s"], net.bytes_total) == (1, 1, 10 + 5)
    await net.deliver("c", "t", handler(log), request_bytes=1, reply_bytes=len)
    assert (net.bytes_count["s"], net.bytes_count["t"], net.bytes_total) == (15, 6, 21)


async def test_dropped_request_never_runs(autojump_clock: trio.testing.MockClock) -> None:
    net = Network(1, Profile(request_drop=1.0, fail_delay=(0.05, 0.05)))
    log: list[str] = []
    start = trio.current_time()
    assert await net.deliver("c", "s", handler(log), request_bytes=3) is None
    assert log == [] and trio.current_time() - start == pytest.approx(0.05)
    assert (net.rpc_total, net.rpc_count["s"], net.bytes_total) == (1, 0, 3)


async def test_dropped_reply_ran_handler(autojump_clock: trio.testing.MockClock) -> None:
    net = Network(1, Profile(reply_drop=1.0))
    log: list[str] = []
    assert await net.deliver("c", "s", handler(log), reply_bytes=len) is None
    assert log == ["ran"] and net.bytes_total == 0


async def test_blocked_and_crashed_calls_fail(autojump_clock: trio.testing.MockClock) -> None:
    net = Network(1, RELIABLE)
    log: list[str] = []
    net.block("c", "s")
    assert await net.deliver("c", "s", handler(log)) is None
    assert await net.deliver("s", "c", handler(log)) == "reply"  # one direction only
    net.unblock("c", "s")
    net.crash("s")
    assert await net.deliver("c", "s", handler(log)) is None
    net.restart("s")
    assert await net.deliver("c", "s", handler(log)) == "reply"
    assert log == ["ran", "ran"]


async def test_partition_cuts_in_flight_calls(autojump_clock: trio.testing.MockClock) -> None:
    net = Network(1, RELIABLE)
    log: list[str] = []
    results: dict[str, object] = {}

    async def call(caller: str, server: str) -> None:
        results[f"{caller}->{server}"] = await net.deliver(caller, server, handler(log, delay=10))

    async with trio.open_nursery() as nursery:
        for caller, server in [("a", "b"), ("b", "a"), ("a", "c"), ("x", "b")]:
            nursery.start_soon(call, caller, server)
        await trio.sleep(1)
        start = trio.current_time()
        net.partition(["a", "c"], ["b"])
    assert results == {"a->b": None, "b->a": None, "a->c": "reply", "x->b": "reply"}
    assert trio.current_time() - start == pytest.approx(9)  # the others ran to the end


async def test_crash_cuts_in_flight_and_later_replies(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = Network(1, Profile(long_reorder=1.0, long_delay=(5, 5)))
    log: list[str] = []
    results: list[object] = []

    async def call() -> None:
        results.append(await net.deliver("c", "s", handler(log, delay=1)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)  # its handler finishes at t=1, its reply is held until t=6
        await trio.sleep(3)
        net.crash("s")
    assert results == [None] and log == ["ran"]


async def test_disconnect_and_connect_are_symmetric(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = Network(1, RELIABLE)
    nodes = ["1", "2", "3"]
    net.disconnect("1", nodes)
    assert not net.reachable("1", "2") and not net.reachable("3", "1")
    assert net.reachable("2", "3") and net.reachable("client", "1")
    net.connect("1", nodes)
    assert all(net.reachable(a, b) for a in nodes for b in nodes)


async def test_decision_log_replays(autojump_clock: trio.testing.MockClock) -> None:
    async def run(seed: int) -> list[str]:
        lines: list[str] = []
        net = Network(seed, MIT_UNRELIABLE, log=lines.append)
        for _ in range(30):
            await net.deliver("c", "s", handler([]))
        return lines

    assert await run(3) == await run(3)
    assert await run(3) != await run(4)
