"""The model of the KV with every op (trioraft.testing.KV_OPS_MODEL): its rules, legal
histories that pass, each kind of anomaly caught (a range that sees half of a txn, a txn
applied twice, a lost delete, ...), its partition by keys touched, and a broken in-memory
server (ranges answered from a stale copy) caught while the correct one passes."""

from __future__ import annotations

import functools
import random
import time

import pytest
import trio

from tests.kvtest import InMemoryOps, InMemoryStore, assert_linearizable, ops_client
from trioraft import Compare, TxnOp
from trioraft.kv.messages import RangeArgs
from trioraft.testing import (
    KV_OPS_MODEL,
    History,
    KVInput,
    KVOutput,
    Operation,
    Txn,
    check_kv_ops,
    partition_by_key,
    partition_by_keys,
)

step = KV_OPS_MODEL.step


def op(kind: str, key: str = "k", value: str = "", version: int = 0, **fields) -> KVInput:
    return KVInput(kind, key, value, version, **fields)


def txn(compare=(), success=(), failure=()) -> KVInput:
    return KVInput("txn", "", txn=Txn(tuple(compare), tuple(success), tuple(failure)))


def ranged(prefix: str = "", start: str = "", end: str = "", limit: int = 100) -> KVInput:
    return KVInput("range", "", range=RangeArgs(prefix, start, end, limit))


def at(
    inp: KVInput, out: KVOutput | None, call: float, ret: float | None = 0.0, client: str = "c"
) -> Operation:
    """An op called at ``call`` that returned half a second later (``ret`` None: never)."""
    return Operation(client, inp, call, out, None if ret is None else (ret or call + 0.5))


ERR = {e: KVOutput(err=e) for e in ("OK", "NoKey", "Version", "Maybe")}


def got(value: str, version: int) -> KVOutput:
    return KVOutput(value, version, "OK" if version else "NoKey")


def items(*triples: tuple[str, str, int], more: bool = False, next: str = "") -> KVOutput:
    return KVOutput(items=tuple(triples), more=more, next=next)


def test_step_follows_the_rules_of_put_delete_and_append() -> None:
    a1 = (("k", "a", 1),)
    assert step((), op("put", value="a"), ERR["OK"]) == (True, a1)
    assert step((), op("put", value="a", version=1), ERR["NoKey"]) == (True, ())
    assert step((), op("put", value="a", version=1), ERR["Version"])[0] is False
    assert step(a1, op("delete", version=1), ERR["OK"]) == (True, ())
    assert step(a1, op("delete", version=2), ERR["Version"]) == (True, a1)
    assert step((), op("delete"), ERR["OK"])[0] is False  # nothing to delete
    assert step((), op("delete"), ERR["NoKey"]) == (True, ())
    assert step(a1, op("delete", version=1), ERR["Maybe"]) == (True, ())
    assert step(a1, op("delete", version=2), ERR["Maybe"]) == (True, a1)
    assert step(a1, op("delete", version=1), None) == (True, ())
    assert step(a1, op("append", value="b"), ERR["OK"]) == (True, (("k", "ab", 2),))
    assert step(a1, op("get"), got("a", 1)) == (True, a1)
    assert step(a1, op("get"), got("", 0))[0] is False
    # "May or may not have applied" is recorded as optional, not as an answer.
    assert step(a1, op("append", value="b"), KVOutput(err="SessionExpired"))[0] is False


def test_step_runs_a_txn_whole_and_checks_its_results() -> None:
    state = (("a", "1", 1),)
    move = txn(
        [Compare("a", "=", version=1), Compare("b", "=", create_index=0)],
        [TxnOp("put", "b", "2"), TxnOp("delete", "a"), TxnOp("get", "b")],
        [TxnOp("get", "a")],
    )
    results = (("OK", "", 1), ("OK", "", 0), ("OK", "2", 1))
    after = (("b", "2", 1),)
    assert step(state, move, KVOutput(succeeded=True, results=results)) == (True, after)
    assert step(state, move, KVOutput(succeeded=False, results=(("OK", "1", 1),)))[0] is False
    assert step(state, move, None) == (True, after)  # the compares hold: it applies
    assert step(after, move, None) == (True, after)  # they do not: nothing changes
    with pytest.raises(ValueError, match="optional"):  # Maybe: it may not have applied
        step(state, move, ERR["Maybe"])
    failed = KVOutput(succeeded=False, results=(("NoKey", "", 0),))
    assert step(after, move, failed) == (True, after)
    wrong = KVOutput(succeeded=True, results=(("OK", "", 2), *results[1:]))
    assert step(state, move, wrong)[0] is False  # b's version after the put is 1
    # Compares on values and versions, any operator; on indexes, only with 0.
    assert step(state, txn([Compare("a", ">", value="0")]), KVOutput(succeeded=True))[0]
    assert step(state, txn([Compare("a", "<", version=1)]), KVOutput(succeeded=False))[0]
    assert step(state, txn([Compare("a", "!=", mod_index=0)]), KVOutput(succeeded=True))[0]
    with pytest.raises(ValueError, match="no log indexes"):
        step(state, txn([Compare("a", "=", mod_index=7)]), KVOutput(succeeded=True))
    writing_failure = txn([Compare("a", "=", version=9)], [], [TxnOp("delete", "a")])
    with pytest.raises(ValueError, match="failure branch writes"):
        step(state, writing_failure, None)


def test_step_answers_ranges_as_the_machine_pages_them() -> None:
    state = (("a", "1", 1), ("b/1", "2", 3), ("b/2", "3", 1), ("c", "4", 2))
    assert step(state, ranged(prefix="b/"), items(("b/1", "2", 3), ("b/2", "3", 1)))[0]
    first = items(("a", "1", 1), ("b/1", "2", 3), more=True, next="b/2")
    assert step(state, ranged(limit=2), first) == (True, state)
    assert step(state, ranged(limit=2), items(("a", "1", 1), ("b/1", "2", 3)))[0] is False
    assert step(state, ranged(start="b/2", end="c"), items(("b/2", "3", 1)))[0]
    assert step(state, ranged(start="b", end="c"), items(("b/2", "3", 1)))[0] is False


def test_legal_histories_pass() -> None:
    assert check_kv_ops(
        [
            at(op("put", value="a"), ERR["OK"], 0),
            at(op("delete", version=1), ERR["OK"], 1),
            at(op("get"), got("", 0), 2),
            at(op("put", value="b"), ERR["OK"], 3),
            at(op("get"), got("b", 1), 4),
        ]
    ).ok
    # Concurrent: the get may go before or after the delete.
    assert check_kv_ops(
        [
            at(op("put", value="a"), ERR["OK"], 0),
            at(op("delete", version=1), ERR["OK"], 1, 3),
            at(op("get"), got("a", 1), 2, 2.5),
        ]
    ).ok
    # A delete that never returned may or may not have applied.
    pending = at(op("delete", version=1), None, 1, None)
    for seen in (got("a", 1), got("", 0)):
        assert check_kv_ops(
            [at(op("put", value="a"), ERR["OK"], 0), pending, at(op("get"), seen, 2)]
        ).ok
    # An append that answered SessionExpired is optional: applied before its return, or not.
    expired = Operation("c", op("append", value="x"), 0, None, 1, optional=True)
    assert check_kv_ops([expired, at(op("get"), got("", 0), 2)]).ok
    assert check_kv_ops([expired, at(op("get"), got("x", 1), 2)]).ok
    expired_late = at(op("get"), got("x", 1), 2), at(op("get"), got("", 0), 3)
    assert check_kv_ops([expired, *expired_late]).ok is False  # not after its return
    # A range concurrent with a txn sees all of it or none of it.
    both = txn([], [TxnOp("put", "a", "1"), TxnOp("put", "b", "1")])
    done = KVOutput(succeeded=True, results=(("OK", "", 1), ("OK", "", 1)))
    for seen in (items(), items(("a", "1", 1), ("b", "1", 1))):
        assert check_kv_ops([at(both, done, 0, 2), at(ranged(), seen, 1)]).ok


@pytest.mark.parametrize(
    "history",
    [
        pytest.param(
            [
                at(op("put", value="a"), ERR["OK"], 0),
                at(op("delete", version=1), ERR["OK"], 1),
                at(op("get"), got("a", 1), 2),
            ],
            id="lost-delete",
        ),
        pytest.param(
            [
                at(op("put", "a", "1"), ERR["OK"], 0),
                at(op("delete", "a", version=1), ERR["OK"], 1),
                at(ranged(), items(("a", "1", 1)), 2),
            ],
            id="lost-delete-seen-by-a-range",
        ),
        pytest.param(
            [
                at(op("put", value="a"), ERR["OK"], 0),
                at(op("delete", version=1), ERR["OK"], 1),
                at(op("get"), got("b", 2), 2),
            ],
            id="re-created-key-does-not-start-over",
        ),
        pytest.param(
            [
                at(op("put", value="a"), ERR["OK"], 0),
                at(op("delete", version=1), ERR["OK"], 1),
                at(op("delete", version=1), ERR["OK"], 2),
            ],
            id="two-deletes-of-one-version",
        ),
        pytest.param(
            [
                at(op("append", value="x"), ERR["OK"], 0),
                at(op("get"), got("xx", 2), 1),
            ],
            id="append-applied-twice",
        ),
        pytest.param(
            [
                at(op("put", "a", "1"), ERR["OK"], 0),
                at(op("delete", "a", version=1), ERR["Maybe"], 1),
                at(op("get", "a"), got("1", 1), 2),
            ],
            # With no other writer, a retried delete met Version or NoKey only if it applied.
            id="maybe-delete-alone-did-not-apply",
        ),
        pytest.param(
            [
                at(
                    txn([], [TxnOp("put", "a", "1"), TxnOp("put", "b", "1")]),
                    KVOutput(succeeded=True, results=(("OK", "", 1), ("OK", "", 1))),
                    0,
                    2,
                ),
                at(ranged(), items(("a", "1", 1)), 1),
            ],
            id="range-sees-half-of-a-txn",
        ),
        pytest.param(
            [
                at(
                    txn([Compare("a", "=", version=0)], [TxnOp("put", "a", "x")]),
                    KVOutput(succeeded=True, results=(("OK", "", 1),)),
                    0,
                ),
                at(op("get", "a"), got("x", 2), 1),
            ],
            id="txn-applied-twice",
        ),
        pytest.param(
            [
                at(op("put", "a", "1"), ERR["OK"], 0),
                at(
                    txn(
                        [Compare("a", "=", value="1")], [TxnOp("delete", "a")], [TxnOp("get", "a")]
                    ),
                    KVOutput(succeeded=False, results=(("OK", "1", 1),)),
                    1,
                ),
            ],
            id="txn-compare-misjudged",
        ),
    ],
)
def test_anomalies_are_caught(history: list[Operation]) -> None:
    result = check_kv_ops(history)
    assert result.ok is False, result.account
    assert "not linearizable" in result.account


def test_histories_split_by_the_keys_their_ops_touch() -> None:
    single = [at(op("put", k, "v"), ERR["OK"], i) for i, k in enumerate("cab")]
    assert partition_by_keys(single) == partition_by_key(single)  # one part per key
    across = at(txn([Compare("a", "=", version=0)], [TxnOp("put", "c", "1")]), None, 5, None)
    parts = partition_by_keys([*single, across])
    assert [[o.input.key for o in part] for part in parts] == [["c", "a", ""], ["b"]]
    over_b = at(ranged(start="b"), items(), 6)
    nothing = at(ranged(prefix="z"), items(), 7)
    parts = partition_by_keys([*single, across, over_b, nothing])
    assert len(parts) == 2 and parts[-1] == [nothing]  # b and c are joined by the range


def run_workload(store: InMemoryStore, seed: int, seconds: float) -> History:
    history = History()

    async def main() -> None:
        stop = trio.Event()
        with trio.fail_after(seconds + 10):
            async with trio.open_nursery() as nursery:
                for me in range(6):
                    kv = history.recording(InMemoryOps(store), f"c{me}")
                    rng = random.Random(seed * 100 + me)
                    client = functools.partial(ops_client, multi_key=True)
                    nursery.start_soon(client, kv, rng, ["x", "y", "z"], stop)
                await trio.sleep(seconds)
                stop.set()

    trio.run(main)
    return history


def test_a_correct_server_passes_and_one_with_stale_ranges_is_caught(seed: int) -> None:
    """Six clients of one in-memory KV: every op, ranges and txns included. Its histories
    are linearizable; a server that answers ranges from a stale copy is caught."""
    good = run_workload(InMemoryStore(), seed, 0.2)
    kinds = {o.input.op for o in good.operations}
    assert kinds == {"get", "put", "delete", "append", "range", "txn"}
    assert_linearizable(good, timeout=30)
    stale = run_workload(InMemoryStore(stale_ranges=True), seed, 0.2)
    result = check_kv_ops(stale.operations, timeout=30)
    assert result.ok is False
    assert "range(" in result.account.split("cannot follow it")[1], result.account


def test_lost_replies_make_many_outcomes_unknown_and_still_check_fast(seed: int) -> None:
    """A third of the writes lose their first reply (half of those applied) and are retried
    with ``retry_after``: many puts, deletes, txns and appends of unknown outcome, in
    thousands of ops. The history is linearizable, and decided in seconds."""
    history = run_workload(InMemoryStore(lost_replies=0.3, seed=seed), seed, 0.3)
    ops = history.operations
    unknown = sum(o.output is None or o.output.err == "Maybe" for o in ops)
    assert len(ops) > 500 and unknown > 20, (len(ops), unknown)
    started = time.monotonic()
    assert_linearizable(history, timeout=30)
    assert time.monotonic() - started < 10


def test_a_server_whose_retries_can_apply_twice_is_caught(seed: int) -> None:
    """The same, but retries carry no ``retry_after``: a retried put or txn whose first
    attempt applied can apply again once a delete has brought its condition back. Some
    run of a few is caught (about half of them are)."""
    for attempt in range(20):
        store = InMemoryStore(lost_replies=0.3, retry_after=False, seed=seed + attempt)
        history = run_workload(store, seed + attempt, 0.2)
        if check_kv_ops(history.operations, timeout=30).ok is False:
            return
    raise AssertionError("20 runs of a server that applies retries twice all passed")
