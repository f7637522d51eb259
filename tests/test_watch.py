"""The watch history and hub: every change under a prefix after an index, once, in order."""

from __future__ import annotations

import random
import tracemalloc

import orjson
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from trioraft.kv.changes import MAX_ANSWER_BYTES, MAX_SCAN, Change, Compacted, WatchHistory
from trioraft.kv.watch import WatchHub


def put(index: int, key: str, value: str = "v") -> Change:
    return Change(index, key, "put", value, 1, index)


class Applier:
    """Stands in for the state machine (fills the history) and the RSM (announces)."""

    def __init__(self, history: WatchHistory | None = None) -> None:
        self.history = history if history is not None else WatchHistory()
        self.hub = WatchHub(self.history, self.next_apply)
        self._applied = trio.Event()

    def record(self, index: int, changes: list[Change]) -> None:
        self.history.record(index, changes)

    def announce(self) -> None:
        self._applied.set()
        self._applied = trio.Event()

    async def next_apply(self) -> None:
        await self._applied.wait()


def test_since_answers_changes_under_the_prefix_after_the_index():
    history = WatchHistory()
    history.record(1, [put(1, "a/1")])
    history.record(2, [put(2, "b/1")])
    history.record(3, [put(3, "a/2"), put(3, "a/3")])
    history.record(4)  # an entry that changed nothing

    changes, through = history.since("a/", 0)
    assert [c.key for c in changes] == ["a/1", "a/2", "a/3"]
    assert through == 4
    changes, through = history.since("a/", 3)
    assert changes == [] and through == 4
    assert [c.key for c in history.since("", 1)[0]] == ["b/1", "a/2", "a/3"]


def test_an_answer_ends_at_an_entry_boundary():
    history = WatchHistory()
    history.record(1, [put(1, "k1")])
    history.record(2, [put(2, "k2"), put(2, "k3"), put(2, "k4")])
    history.record(3, [put(3, "k5")])
    changes, through = history.since("k", 0, limit=2)
    # The limit falls inside entry 2: the rest of that entry comes too, then it stops.
    assert [c.key for c in changes] == ["k1", "k2", "k3", "k4"]
    assert through == 2
    changes, through = history.since("k", through, limit=2)
    assert [c.key for c in changes] == ["k5"] and through == 3


def test_an_answer_stops_at_max_answer_chars_at_an_entry_boundary():
    """Many watchers of large values each got the whole history in one answer (up to the
    history's 64 MiB): an answer stops past MAX_ANSWER_BYTES, as a range page does."""
    history = WatchHistory()
    big = "v" * (MAX_ANSWER_BYTES // 3)
    for index in range(1, 11):
        history.record(index, [put(index, f"k{index}", big)])
    history.record(11, [put(11, "a", big), put(11, "b", big), put(11, "c", big), put(11, "d", big)])
    seen: list[str] = []
    through = 0
    while through < 11:
        changes, through = history.since("", through, limit=10_000)
        assert sum(len(c.value) for c in changes) <= MAX_ANSWER_BYTES + 4 * len(big)
        seen += [c.key for c in changes]
    assert seen == [f"k{i}" for i in range(1, 11)] + ["a", "b", "c", "d"]
    assert [c.key for c in history.since("", 10)[0]] == ["a", "b", "c", "d"]  # one entry, whole
    # Bytes as sent: an emoji takes 12 (two \u escapes).
    emoji = WatchHistory()
    for index in range(1, 11):
        emoji.record(index, [put(index, f"e{index}", "😀" * (MAX_ANSWER_BYTES // 36))])
    changes, through = emoji.since("", 0, limit=10_000)
    assert len(changes) == 3 and through == 3


def test_bounds_compact_whole_entries_and_a_watch_before_them_is_refused():
    history = WatchHistory(max_changes=3)
    for index in range(1, 6):
        history.record(index, [put(index, f"k{index}")])
    assert len(history) == 3
    assert history.compacted_through == 2
    with pytest.raises(Compacted) as refused:
        history.since("", 1)
    assert refused.value.compacted_through == 2
    assert [c.index for c in history.since("", 2)[0]] == [3, 4, 5]


def test_a_byte_bound_compacts_too():
    history = WatchHistory(max_bytes=1000)
    for index in range(1, 21):
        history.record(index, [put(index, "k", "x" * 200)])
    assert len(history) < 5
    assert history.compacted_through == 20 - len(history)


def test_reset_starts_over_at_the_snapshot():
    history = WatchHistory()
    history.record(1, [put(1, "k")])
    history.reset(10)
    with pytest.raises(Compacted):
        history.since("", 5)
    assert history.since("", 10) == ([], 10)
    with pytest.raises(ValueError):
        history.record(9)


@given(
    st.lists(st.lists(st.sampled_from(["a/x", "a/y", "b/x", "ab"]), max_size=4), max_size=40),
    st.integers(min_value=1, max_value=30),
    st.integers(min_value=1, max_value=5),
)
def test_resuming_from_through_gives_each_change_once_in_order(entries, max_changes, limit):
    """Against a plain list of every change: no gap, no duplicate, or Compacted."""
    history = WatchHistory(max_changes=max_changes)
    everything: list[Change] = []
    for index, keys in enumerate(entries, start=1):
        changes = [put(index, key) for key in keys]
        everything.extend(changes)
        history.record(index, changes)
    seen: list[Change] = []
    after = 0
    try:
        while True:
            changes, through = history.since("a", after, limit)
            seen.extend(changes)
            if through == after:
                break
            after = through
    except Compacted as refused:
        assert refused.after < history.compacted_through
        seen = [c for c in seen if c.index > refused.after]
        after = refused.compacted_through
        expected = [c for c in everything if c.key.startswith("a") and c.index > after]
        assert history.since("a", after, 10**9)[0] == expected
        return
    assert seen == [c for c in everything if c.key.startswith("a")]


async def test_hub_watchers_get_each_change_under_their_prefix_once_in_order():
    applier = Applier()
    hub = applier.hub
    rng = random.Random(1)
    recorded = [put(index, rng.choice(["a/1", "a/2", "b/1"])) for index in range(1, 30)]
    expected = [change for change in recorded if change.key.startswith("a/")]
    received: list[Change] = []

    async def watcher() -> None:
        async with hub.watch("a/", after=0) as changes:
            async for change in changes:
                received.append(change)
                if len(received) == len(expected):
                    return

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watcher)
            for change in recorded:
                await trio.testing.wait_all_tasks_blocked()
                applier.record(change.index, [change])
                if rng.random() < 0.5:  # one announcement may cover several entries
                    applier.announce()
            applier.announce()
    assert received == expected


async def test_next_changes_waits_then_answers_and_a_bounded_poll_moves_through_on(
    autojump_clock,
):
    applier = Applier()
    hub = applier.hub
    applier.record(1, [put(1, "b")])
    with trio.move_on_after(1):
        await hub.next_changes("a", 0)
        pytest.fail("nothing under 'a' yet")
    assert hub.history.since("a", 0) == ([], 1)

    async def later() -> None:
        await trio.testing.wait_all_tasks_blocked()
        applier.record(2, [put(2, "a")])
        applier.announce()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(later)
            changes, through = await hub.next_changes("a", 1)
    assert [c.key for c in changes] == ["a"] and through == 2


async def test_watch_from_a_compacted_index_is_refused_at_once():
    applier = Applier(WatchHistory(max_changes=1))
    hub = applier.hub
    applier.record(1, [put(1, "a")])
    applier.record(2, [put(2, "a")])
    with pytest.raises(Compacted):
        async with hub.watch("a", after=0):
            pytest.fail("entered a compacted watch")


@pytest.mark.parametrize("widest", ["a", "\u00e9", "\U0001f600"])
def test_the_history_holds_no_more_memory_than_its_bound(widest: str) -> None:
    """Overwriting one key with large values: the history keeps what ``max_bytes`` allows,
    counted as the strings are stored (a string takes 1, 2 or 4 bytes a character, by its
    widest), and lets the dropped changes go at once (it once held the last 1,024)."""
    history = WatchHistory(max_bytes=4 << 20)
    tracemalloc.start()
    try:
        for index in range(1, 301):
            value = widest + str(index) * (256 << 10)  # a string of its own each time
            history.record(index, [Change(index, "big", "put", value, index, 1)])
            del value
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 6 << 20 and 0 < len(history) < 300


async def test_a_watch_of_a_quiet_prefix_looks_through_a_bounded_number_of_changes():
    """25,000 changes elsewhere (two to an entry), then one under the prefix: each answer
    looks through at most MAX_SCAN of them, ending at an entry boundary and running through
    it; the hub goes on from there (letting other tasks run) and finds the change."""
    applier = Applier()
    for index in range(1, 12_501):
        applier.record(index, [put(index, f"other/{index}"), put(index, f"else/{index}")])
    applier.record(12_501, [put(12_501, "quiet/x")])
    changes, through = applier.history.since("quiet/", 0)
    assert changes == [] and through == MAX_SCAN // 2  # 10,000 changes: 5,000 entries
    changes, through = applier.history.since("quiet/", through)
    assert changes == [] and through == MAX_SCAN
    with trio.fail_after(10):
        changes, through = await applier.hub.next_changes("quiet/", 0)
    assert [c.key for c in changes] == ["quiet/x"] and through == 12_501
    async with applier.hub.watch("quiet/", after=0) as stream:
        with trio.fail_after(10):
            assert (await anext(stream)).key == "quiet/x"


def test_a_dropped_change_takes_off_what_it_was_counted_for() -> None:
    """A string can grow after it is recorded (orjson keeps a non-ASCII string's UTF-8 form
    in it once it is sent): what a dropped change takes off the count is what it added, or
    the count drifts down and the bound stops holding."""
    history = WatchHistory(max_changes=1)
    first = put(1, "k", "välue" * 1000)
    history.record(1, [first])
    counted = history._bytes
    orjson.dumps(first.value)  # sent to a watcher: the string grows
    history.record(2, [put(2, "k", "v")])
    history.record(3, [put(3, "k", "välue" * 1000)])
    assert history._bytes == counted
