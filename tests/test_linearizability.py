"""The linearizability checker: against brute force for every built-in model (the KV with
every op on histories of trioraft's own machine), on known anomalies, on its explanations and
pictures, and on large histories."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.kvtest import InMemoryKV, InMemoryOps, InMemoryStore
from trioraft import Compare, KeyNotFound, MaybeApplied, NoSpace, TxnOp, VersionConflict
from trioraft.kv.machine import VersionedKV
from trioraft.kv.messages import RangeArgs
from trioraft.testing import (
    KV_MODEL,
    KV_OPS_MODEL,
    VERSIONED_KV_MODEL,
    History,
    KVInput,
    KVOutput,
    Model,
    Operation,
    RegisterInput,
    Txn,
    check,
    check_operations,
    register_model,
)

REGISTER = register_model(0)


def get(client: str, value: str, version: int, err: str, call: float, ret: float | None, key="k"):
    """A versioned-KV get; one that never returned has no output."""
    output = None if ret is None else KVOutput(value, version, err)
    return Operation(client, KVInput("get", key), call, output, ret)


def put(client: str, value: str, version: int, err: str, call: float, ret: float | None, key="k"):
    """A versioned-KV put; one that never returned has no output."""
    output = None if ret is None else KVOutput(err=err)
    return Operation(client, KVInput("put", key, value, version), call, output, ret)


# -- brute force ---------------------------------------------------------------------------


def brute_force(model: Model, ops: list[Operation]) -> bool:
    """Every part has an order of its returned ops plus some of the others that respects
    real time and in which every step is legal."""
    parts = model.partition(ops) if model.partition is not None else [ops]
    return all(_part_linearizable(model, part) for part in parts)


def _part_linearizable(model: Model, ops: list[Operation]) -> bool:
    returned = [op for op in ops if op.ret is not None and not op.optional]
    pending = [op for op in ops if op.ret is None or op.optional]
    for k in range(len(pending) + 1):
        for taken in itertools.combinations(pending, k):
            for order in itertools.permutations([*returned, *taken]):
                if _respects_real_time(order) and _legal(model, order):
                    return True
    return False


def _respects_real_time(order: tuple[Operation, ...]) -> bool:
    for i, earlier in enumerate(order):
        for later in order[i + 1 :]:
            if later.ret is not None and later.ret < earlier.call:
                return False  # `later` finished before `earlier` started
    return True


def _legal(model: Model, order: tuple[Operation, ...]) -> bool:
    state = model.init
    for op in order:
        legal, state = model.step(state, op.input, op.output)
        if not legal:
            return False
    return True


# -- random histories: a real execution at random linearization points ---------------------


Apply = Callable[[random.Random, Any, str], tuple[Any, Any, Any]]


def simulate(
    rng: random.Random,
    model: Model,
    apply: Apply,
    n_ops: int,
    n_keys: int,
    cancelled: float = 0.1,
    optional: float = 0.0,
):
    """``apply(rng, state, key) -> (input, output, next_state)`` runs one op on a correct
    object; ops take effect at random points of their intervals; a fraction ``cancelled``
    never return, and sometimes one output is corrupted (which makes most such histories
    illegal). A fraction ``optional`` return but may not have taken effect (half of them
    did not)."""
    points = []
    for i in range(n_ops):
        call = rng.uniform(0, 10)
        ret = call + rng.uniform(0.01, 4)
        points.append((rng.uniform(call, ret), i, call, ret))
    states = {f"k{j}": model.init for j in range(n_keys)}
    ops = []
    for _point, i, call, ret in sorted(points):
        key = rng.choice(sorted(states))
        inp, out, after = apply(rng, states[key], key)
        if rng.random() < cancelled:  # it took effect, or (half the time) never did
            ops.append(Operation(f"c{i}", inp, call, None, None))
            if rng.random() < 0.5:
                continue
        elif rng.random() < optional:
            ops.append(Operation(f"c{i}", inp, call, out, ret, optional=True))
            if rng.random() < 0.5:
                continue
        else:
            ops.append(Operation(f"c{i}", inp, call, out, ret))
        states[key] = after
    if rng.random() < 0.5:  # corrupt one output, a read's if there is one
        reads = [i for i, op in enumerate(ops) if op.input.op in ("get", "read")]
        victim = rng.choice(reads or range(len(ops)))
        ops[victim] = corrupt(rng, ops[victim])
    rng.shuffle(ops)
    return ops


def corrupt(rng: random.Random, op: Operation) -> Operation:
    if op.output is None:
        return op
    if isinstance(op.output, KVOutput):
        flip = {"OK": "Version", "Version": "OK", "NoKey": "OK", "Maybe": "OK"}
        bad = dataclasses.replace(
            op.output,
            value=rng.choice(["", "a", "b", "ab"]),
            version=rng.randrange(3),
            err=flip[op.output.err] if op.input.op == "put" else op.output.err,
        )
        return dataclasses.replace(op, output=bad)
    return dataclasses.replace(op, output=rng.choice([0, 1, 2, True, False]))


def versioned_kv_op(rng: random.Random, state: tuple[str, int], key: str):
    value, version = state
    if rng.random() < 0.4:
        out = KVOutput(value, version, "OK" if version else "NoKey")
        return KVInput("get", key), out, state
    if rng.random() < 0.2:
        arg = rng.choice("ab")
        return KVInput("append", key, arg), KVOutput(), (value + arg, version + 1)
    want = version if rng.random() < 0.6 else rng.randrange(3)
    new_value = rng.choice("ab")
    if want == version:
        err, state = "OK", (new_value, version + 1)
    else:
        err = "NoKey" if version == 0 else "Version"
    if rng.random() < 0.15:
        err = "Maybe"
    return KVInput("put", key, new_value, want), KVOutput(err=err), state


def plain_kv_op(rng: random.Random, state: str, key: str):
    roll = rng.random()
    if roll < 0.4:
        return KVInput("get", key), KVOutput(state), state
    arg = rng.choice("ab")
    if roll < 0.6:
        return KVInput("put", key, arg), KVOutput(), arg
    return KVInput("append", key, arg), KVOutput(), state + arg


def register_op(rng: random.Random, state: int, _key: str):
    roll = rng.random()
    if roll < 0.4:
        return RegisterInput("read"), state, state
    value = rng.randrange(3)
    if roll < 0.7:
        return RegisterInput("write", value), True, value
    expected = rng.randrange(3)
    swapped = state == expected
    return RegisterInput("cas", value, expected), swapped, value if swapped else state


MODELS: dict[str, tuple[Model, Apply, int]] = {
    "versioned-kv": (VERSIONED_KV_MODEL, versioned_kv_op, 2),
    "kv": (KV_MODEL, plain_kv_op, 2),
    "register": (REGISTER, register_op, 1),
}


@pytest.mark.parametrize("name", MODELS)
def test_agrees_with_brute_force_on_random_histories(seed: int, name: str) -> None:
    model, apply, keys = MODELS[name]
    without_shortcut = dataclasses.replace(model, read_only=None, inert=None)
    rng = random.Random(seed)
    verdicts = {True: 0, False: 0}
    for _ in range(1000):
        n_ops, n_keys = rng.randrange(1, 8), rng.randrange(1, keys + 1)
        ops = simulate(rng, model, apply, n_ops, n_keys, optional=rng.choice([0.0, 0.2]))
        expected = brute_force(model, ops)
        description = "\n".join(model.describe(op) for op in ops)
        assert check_operations(model, ops).ok is expected, description
        assert check_operations(without_shortcut, ops).ok is expected, description
        verdicts[expected] += 1
    assert min(verdicts.values()) > 150, verdicts  # both verdicts well exercised


def plain_search(model: Model, ops: list[Operation]) -> bool:
    """Wing & Gong's search with nothing but memoised configurations: slower than the
    checker's, but plainly right, so it can judge histories too long for brute force."""
    parts = model.partition(ops) if model.partition is not None else [ops]
    return all(_plain_search_part(model, part) for part in parts)


def _plain_search_part(model: Model, ops: list[Operation]) -> bool:
    must = frozenset(i for i, op in enumerate(ops) if op.ret is not None and not op.optional)
    failed: set[tuple[frozenset[int], Any]] = set()

    def extend(done: frozenset[int], state: Any) -> bool:
        if must <= done:
            return True
        if (done, state) in failed:
            return False
        first_return = min(ops[i].ret for i in must - done)
        last_call = max((ops[i].call for i in done), default=-math.inf)
        for i, op in enumerate(ops):
            # Not after its own return either (an optional op: it can still be left out).
            if i not in done and op.call <= first_return and (op.ret or math.inf) >= last_call:
                legal, after = model.step(state, op.input, op.output)
                if legal and extend(done | {i}, after):
                    return True
        failed.add((done, state))
        return False

    return extend(frozenset(), model.init)


@pytest.mark.parametrize("name", MODELS)
def test_agrees_with_a_plain_search_on_longer_histories(seed: int, name: str) -> None:
    """Up to 13 ops, up to 60% of them never returning, some optional: the pruning of ops
    that never returned is exercised far more than in the brute-force test."""
    model, apply, keys = MODELS[name]
    without_shortcut = dataclasses.replace(model, read_only=None, inert=None)
    rng = random.Random(seed)
    verdicts = {True: 0, False: 0}
    for _ in range(600):
        n_ops, n_keys = rng.randrange(1, 14), rng.randrange(1, keys + 1)
        cancelled, optional = rng.choice([0.1, 0.3, 0.6]), rng.choice([0.0, 0.3])
        ops = simulate(rng, model, apply, n_ops, n_keys, cancelled, optional)
        expected = plain_search(model, ops)
        description = "\n".join(model.describe(op) for op in ops)
        assert check_operations(model, ops).ok is expected, description
        assert check_operations(without_shortcut, ops).ok is expected, description
        verdicts[expected] += 1
    assert min(verdicts.values()) > 30, verdicts  # both verdicts well exercised


# -- the versioned KV's rules, on known anomalies ------------------------------------------


def test_stale_read_is_caught_and_explained() -> None:
    history = [
        put("a", "x", 0, "OK", 0, 1),
        put("a", "y", 1, "OK", 2, 3),
        get("b", "x", 1, "OK", 4, 5),  # starts after y was acknowledged
        get("c", "x", 1, "OK", 6, 7),  # so does this one, but it returned later
    ]
    result = check(history)
    assert result.ok is False and result.failure is not None
    assert [history[i] for i in result.failure.prefix] == history[:2]
    assert result.failure.states == [("x", 1), ("y", 2)]
    assert result.failure.operations[result.failure.culprit] == history[2]
    assert "longest linearizable prefix (2 operations)" in result.account
    assert "get('k') -> ('x', 1, OK)   (illegal)" in result.account


def test_lost_write_is_caught() -> None:
    assert check([put("a", "x", 0, "OK", 0, 1), get("b", "", 0, "NoKey", 2, 3)]).ok is False


def test_double_applied_put_is_caught() -> None:
    # version 2: the put applied twice
    assert check([put("a", "x", 0, "OK", 0, 1), get("b", "x", 2, "OK", 2, 3)]).ok is False


def test_maybe_may_or_may_not_apply() -> None:
    applied = [put("a", "x", 0, "Maybe", 0, 1), get("b", "x", 1, "OK", 2, 3)]
    not_applied = [  # b's put won; a's retry then saw Version and could not tell
        put("b", "y", 0, "OK", 0, 1),
        put("a", "x", 0, "Maybe", 0.5, 2),
        get("c", "y", 1, "OK", 3, 4),
    ]
    assert check(applied).ok and check(not_applied).ok
    # With no other writer, a retry can only see Version if the first attempt applied.
    alone = [put("a", "x", 0, "Maybe", 0, 1), get("b", "", 0, "NoKey", 2, 3)]
    assert check(alone).ok is False


def test_an_op_that_never_returned_takes_effect_later_or_never() -> None:
    pending_put = put("a", "x", 0, "", 0, None)
    assert check([pending_put, get("b", "x", 1, "OK", 5, 6)]).ok  # took effect
    assert check([pending_put, get("b", "", 0, "NoKey", 5, 6)]).ok  # not yet, or never
    # ... but not before it was called.
    assert check([get("b", "x", 1, "OK", 0, 1), put("a", "x", 0, "", 2, None)]).ok is False
    assert check([get("a", "zzz", 9, "OK", 0, None)]).ok


def test_unknown_output_is_given_to_the_model() -> None:
    """A cas that returned with an unknown outcome swapped exactly if it found what it
    expected (the register's rule): ``step`` sees the ``None``."""
    cas = Operation("a", RegisterInput("cas", 5, 0), 0.0, None, 1.0)
    assert check_operations(REGISTER, [cas, Operation("b", RegisterInput("read"), 2, 5, 3)]).ok
    read_old = Operation("b", RegisterInput("read"), 2, 0, 3)
    assert check_operations(REGISTER, [cas, read_old]).ok is False


def test_concurrent_ops_may_take_either_order() -> None:
    history = [
        put("a", "x", 0, "OK", 0, 10),
        get("b", "", 0, "NoKey", 1, 2),
        get("c", "x", 1, "OK", 3, 4),
    ]
    assert check(history).ok
    swapped = [history[0], get("b", "x", 1, "OK", 1, 2), get("c", "", 0, "NoKey", 3, 4)]
    assert check(swapped).ok is False


def test_touching_intervals_are_concurrent() -> None:
    """A read that returned at the very time a write was called may still have seen it."""
    write, read = put("a", "x", 0, "OK", 1, 2), get("b", "x", 1, "OK", 0, 1)
    assert check([write, read]).ok
    assert check([write, dataclasses.replace(read, ret=0.999)]).ok is False


def test_keys_are_independent_and_smallest_failure_reported() -> None:
    history = [put("a", "x", 0, "OK", 0, 1, key=f"k{i}") for i in range(3)]
    history += [get("b", "", 0, "NoKey", 2, 3, key="k1")]
    history += [
        put("c", "x", 0, "OK", 0, 1, key="big"),
        put("c", "x", 0, "OK", 2, 3, key="big"),
        put("c", "y", 0, "OK", 4, 5, key="big"),
    ]
    result = check(history)
    assert result.ok is False and result.parts == 4 and result.failure is not None
    assert {op.input.key for op in result.failure.operations} == {"k1"}


def test_the_plain_kv_appends_in_order() -> None:
    def op(client: str, kind: str, value: str, call: float, ret: float) -> Operation:
        out = KVOutput(value) if kind == "get" else KVOutput()
        return Operation(client, KVInput(kind, "k", "" if kind == "get" else value), call, out, ret)

    appends = [op("a", "append", "1", 0, 5), op("b", "append", "2", 0, 5)]
    assert check_operations(KV_MODEL, [*appends, op("c", "get", "21", 6, 7)]).ok
    lost = [*appends, op("c", "get", "1", 6, 7)]
    assert check_operations(KV_MODEL, lost).ok is False


def queue_step(state: tuple[int, ...], inp: tuple[str, int], out: int | None):
    """A FIFO queue whose dequeue waits for an item: a dequeue of an empty queue is never
    legal, even one whose outcome is unknown."""
    kind, value = inp
    if kind == "enqueue":
        return True, (*state, value)
    return bool(state) and out in (None, state[0]), state[1:]


QUEUE: Model = Model(init=(), step=queue_step)


def enqueue(client: str, value: int, call: float, ret: float | None) -> Operation:
    return Operation(client, ("enqueue", value), call, None, ret)


def dequeue(client: str, value: int | None, call: float, ret: float | None) -> Operation:
    return Operation(client, ("dequeue", 0), call, value, ret)


def test_a_model_of_our_own() -> None:
    """Any object can be checked, here with states that are tuples."""
    enqueues = [enqueue("a", 1, 0, 1), enqueue("b", 2, 0, 1)]
    assert check_operations(QUEUE, [*enqueues, dequeue("c", 2, 2, 3), dequeue("c", 1, 4, 5)]).ok
    twice = [*enqueues, dequeue("c", 2, 2, 3), dequeue("c", 2, 4, 5)]
    result = check_operations(QUEUE, twice)
    assert result.ok is False and result.failure is not None
    assert result.failure.operations[result.failure.culprit] == twice[3]


def test_an_op_that_never_returned_may_never_take_effect() -> None:
    """A dequeue still waiting when the history ends cannot have taken effect (the one item
    went to another dequeue): it must be left out, which is allowed."""
    waiting = dequeue("w", None, 1, None)
    history = [enqueue("a", 1, 0, 1), waiting, dequeue("b", 1, 2, 3)]
    assert check_operations(QUEUE, history).ok is True
    returned = dataclasses.replace(waiting, ret=4.0)  # had it returned, it must fit in
    assert check_operations(QUEUE, [*history[:1], returned, history[2]]).ok is False


def test_a_search_that_runs_out_of_time_says_so() -> None:
    """Sixteen concurrent appends nobody reads until the end, read back in a wrong order:
    the search must try every order of them before refusing (far more than 0.2 s)."""
    values = [f"{i}." for i in range(16)]
    appends = [
        Operation(i, KVInput("append", "k", v), 0, KVOutput(), 1) for i, v in enumerate(values)
    ]
    wrong = Operation("r", KVInput("get", "k"), 2, KVOutput("".join(reversed(values)) + "x"), 3)
    result = check_operations(KV_MODEL, [*appends, wrong], timeout=0.2)
    assert result.ok is None and "ran out of time" in result.account


def test_orders_that_reach_the_same_state_are_explored_once() -> None:
    """Twelve concurrent puts of one value, then a read of another: refusing it means trying
    every set of puts once (4,096 configurations), not every order (12! = 479,001,600)."""
    puts = [Operation(i, KVInput("put", "k", "a"), 0, KVOutput(), 1) for i in range(12)]
    impossible = Operation("r", KVInput("get", "k"), 2, KVOutput("b"), 3)
    assert check_operations(KV_MODEL, [*puts, impossible], timeout=20).ok is False


def test_writes_that_never_returned_do_not_multiply_the_search() -> None:
    """Forty rounds of: write 0, read 0, then a write that never returns; an impossible read
    last. Each waiting write may take effect at any later point, in any order with the
    others: refusing must not try every set of them (2^40) in every round."""
    ops = []
    for i in range(40):
        ops += [
            Operation("w", RegisterInput("write", 0), 10 * i, True, 10 * i + 1),
            Operation("r", RegisterInput("read"), 10 * i + 2, 0, 10 * i + 3),
            Operation(f"p{i}", RegisterInput("write", i + 1), 10 * i + 4, None, None),
        ]
    ops.append(Operation("r", RegisterInput("read"), 400, 99, 401))
    assert check_operations(REGISTER, ops, timeout=20).ok is False


def test_puts_of_unknown_outcome_that_lost_do_not_multiply_the_search() -> None:
    """Twenty clients put at version 0 at once; one answers OK, the others Maybe (they were
    retried); every client then reads the winner's value. Once a put has won, the Maybe puts
    at version 0 can never apply: deciding must not try every set of them (2^19) after each
    of the twenty possible first puts (a history of the replicated KV's fault tests)."""
    ops = [put(f"c{i}", f"v{i}", 0, "OK" if i == 8 else "Maybe", i / 100, 2) for i in range(20)]
    ops += [get(f"c{i}", "v8", 1, "OK", 2 + i / 100, 3) for i in range(20)]
    assert check(ops, timeout=20).ok is True
    ops.append(get("late", "v3", 1, "OK", 4, 5))  # a value that lost
    assert check(ops, timeout=20).ok is False


def test_rejects_an_op_that_returned_before_its_call() -> None:
    with pytest.raises(ValueError, match="returned before it was called"):
        check([get("a", "", 0, "NoKey", 2, 1)])


# -- the picture ---------------------------------------------------------------------------


def test_a_failure_draws_its_history(tmp_path: Path) -> None:
    history = [
        put("a", "<b>x</b>", 0, "OK", 0, 1),
        put("a", "y", 1, "OK", 2, 3),
        get("b", "<b>x</b>", 1, "OK", 4, 5),
        put("c", "z", 2, "", 6, None),  # called too late to be linearized
    ]
    result = check(history)
    page = result.write_html(tmp_path / "history.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "<script" not in page
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page  # escaped
    assert page.count('class="op prefix"') == 2 and page.count('class="op culprit"') == 1
    assert 'class="op rest pending"' in page  # the put that never returned, dashed
    assert "#1 put(" in page and "#2 put(" in page  # the prefix, numbered in its order
    assert "not linearizable" in page and "longest linearizable prefix" in page


def test_a_passing_history_draws_every_op(tmp_path: Path) -> None:
    history = [put("a", "x", 0, "OK", 0, 1, key=k) for k in "pq"]
    page = check(history).write_html(tmp_path / "ok.html").read_text()
    assert page.count('class="op ok"') == 2 and ": linearizable" in page


# -- recording -----------------------------------------------------------------------------


class _Dict(InMemoryKV):
    """A correct in-memory versioned KV that can be made to hang."""

    def __init__(self) -> None:
        super().__init__()
        self.hang = False
        self.refuse_retry = False  # answer Maybe without applying: a retry refused whole

    async def put(self, key: str, value: str, version: int) -> None:
        if self.hang:
            await trio.sleep_forever()
        if self.refuse_retry:
            raise MaybeApplied("a retry was refused (400); an earlier attempt may have applied")
        await super().put(key, value, version)


async def test_history_records_outcomes_and_cancelled_calls() -> None:
    history = History()
    store = _Dict()
    kv = history.recording(store, "c1")
    await kv.put("k", "x", 0)
    with pytest.raises(VersionConflict):
        await kv.put("k", "y", 0)
    assert await kv.get("k") == ("x", 1)
    store.hang = True
    with trio.move_on_after(0.01):
        await kv.put("k", "z", 1)
    outputs = [(op.input.op, op.output, op.ret is None) for op in history.operations]
    assert outputs == [
        ("put", KVOutput(err="OK"), False),
        ("put", KVOutput(err="Version"), False),
        ("get", KVOutput("x", 1, "OK"), False),
        ("put", None, True),
    ]
    assert history.check().ok is True


async def test_history_records_a_maybe_put_as_one_that_may_never_apply() -> None:
    """A put answered Maybe because its retry was refused whole may not have applied even
    though its version matched throughout: recorded optional, that history checks."""
    history = History()
    store = _Dict()
    kv = history.recording(store, "c1")
    store.refuse_retry = True
    with pytest.raises(MaybeApplied):
        await kv.put("k", "x", 0)
    store.refuse_retry = False
    assert await kv.get("k") == ("", 0)
    assert [op.optional for op in history.operations] == [True, False]
    assert history.check().ok is True


async def test_history_records_every_op_and_checks_them_with_the_model_of_every_op() -> None:
    """Deletes, txns and ranges are recorded too (answered and raised as the client does),
    and such a history is checked with KV_OPS_MODEL: a correct one passes, a get of a
    deleted key is caught."""
    history = History()
    kv = history.recording(InMemoryOps(InMemoryStore()), "c1")
    await kv.put("a", "1", 0)
    await kv.delete("a", 1)
    with pytest.raises(KeyNotFound):
        await kv.delete("a", 1)
    outcome = await kv.txn([Compare("b", "=", create_index=0)], [TxnOp("put", "b", "2")])
    assert outcome.succeeded
    page = await kv.range()
    assert [(item.key, item.value) for item in page.items] == [("b", "2")]
    await kv.append("b", "3")
    assert await kv.get("b") == ("23", 2)
    kinds = [op.input.op for op in history.operations]
    assert kinds == ["put", "delete", "delete", "txn", "range", "append", "get"]
    assert history.operations[2].output == KVOutput(err="NoKey")
    assert history.check().ok is True
    stale = KVInput("get", "a")
    history.operations.append(
        Operation("c2", stale, history.clock(), KVOutput("1", 1), history.clock())
    )
    assert history.check().ok is False


class _Failing:
    """A client whose every call fails: a write refused for no space, a read in error."""

    async def get(self, key: str) -> None:
        raise ValueError("unexpected get error")

    async def put(self, key: str, value: str, version: int) -> None:
        raise NoSpace()


async def test_history_records_a_write_that_failed_otherwise_as_never_returned() -> None:
    """A write that raised something other than its outcome may or may not apply, at any
    time: never returned. A read that raised observed nothing: not recorded."""
    history = History()
    kv = history.recording(_Failing(), "c1")
    with pytest.raises(NoSpace):
        await kv.put("k", "x", 0)
    with pytest.raises(ValueError):
        await kv.get("k")
    [put] = history.operations
    assert (put.input.op, put.output, put.ret) == ("put", None, None)
    assert history.check().ok is True


# -- size ----------------------------------------------------------------------------------


def test_ten_thousand_ops_from_fifty_clients_check_in_seconds() -> None:
    """One key, fifty clients always overlapping: gets, puts at the version last read (most
    answer Version; 1 in 50 is cancelled and never returns), each taking effect at a random
    point of its interval. It must be accepted, and refused with one stale read."""
    rng = random.Random(50)
    clock = [rng.uniform(0, 1) for _ in range(50)]
    calls = []
    for k in range(10_000):
        c = k % 50
        call, ret = clock[c], clock[c] + rng.uniform(0, 2)
        clock[c] = ret + rng.uniform(0, 0.1)
        calls.append((rng.uniform(call, ret), c, call, ret, k))
    value, version, last_read, ops = "", 0, [0] * 50, []
    for _point, c, call, ret, k in sorted(calls):
        if rng.random() < 0.5:
            last_read[c] = version
            ops.append(get(f"c{c}", value, version, "OK" if version else "NoKey", call, ret))
        elif last_read[c] == version:
            value, version = f"v{k}", version + 1
            cancelled = rng.random() < 0.02
            ops.append(put(f"c{c}", value, version - 1, "OK", call, None if cancelled else ret))
        else:
            err = "NoKey" if version == 0 else "Version"
            ops.append(put(f"c{c}", f"v{k}", last_read[c], err, call, ret))
    assert check(ops, timeout=30).ok is True
    stale = next(
        i
        for i in range(5000, 10_000)
        if ops[i].input.op == "get" and ops[i].output is not None and ops[i].output.version
    )
    ops[stale] = get(ops[stale].client, "", 0, "NoKey", ops[stale].call, ops[stale].ret)
    assert check(ops, timeout=30).ok is False


# -- the KV with every op: histories of the real machine, cross-checked --------------------


OPS_KEYS = ["a0", "a1", "b0"]


def machine_op(rng: random.Random, kv: VersionedKV, index: int) -> tuple[KVInput, KVOutput]:
    """One random op of any kind, run on trioraft's own machine (so the model's rules are
    checked against it too): its input and what the machine answered."""
    key = rng.choice(OPS_KEYS)
    current = kv.get(key).version
    roll = rng.random()
    if roll < 0.2:
        r = kv.get(key)
        return KVInput("get", key), KVOutput(r.value, r.version, r.err)
    if roll < 0.35:
        version = current if rng.random() < 0.6 else rng.randrange(3)
        value = rng.choice("xy")
        return KVInput("put", key, value, version), KVOutput(
            err=kv.put(key, value, version, index).err
        )
    if roll < 0.45:
        version = current if rng.random() < 0.7 else rng.randrange(3)
        return KVInput("delete", key, "", version), KVOutput(err=kv.delete(key, version, index).err)
    if roll < 0.55:
        value = rng.choice("xy")
        kv.append(key, value, index)
        return KVInput("append", key, value), KVOutput()
    if roll < 0.75:
        query = RangeArgs(
            rng.choice(["", "", "a", "b"]), rng.choice(["", "a1"]), rng.choice(["", "b0"]),
            rng.choice([1, 2, 100]),
        )  # fmt: skip
        page = kv.range(query.prefix, query.start, query.end, query.limit, index)
        found = tuple((i.key, i.value, i.version) for i in page.items)
        return KVInput("range", "", range=query), KVOutput(
            items=found, more=page.more, next=page.next
        )
    compares = []
    for _ in range(rng.randrange(3)):
        target = rng.choice(["value", "version", "create_index"])
        operand = {"value": rng.choice(["", "x", "y"]), "version": rng.randrange(3)}.get(target, 0)
        compares.append(
            Compare(rng.choice(OPS_KEYS), rng.choice(["=", "!=", ">"]), **{target: operand})
        )

    def branch(writes: bool) -> tuple[TxnOp, ...]:
        kinds = ["get", "put", "delete"] if writes else ["get"]
        return tuple(
            TxnOp(rng.choice(kinds), rng.choice(OPS_KEYS), rng.choice("xy"))
            for _ in range(rng.randrange(3))
        )

    success, failure = branch(True), branch(rng.random() < 0.3)
    reply = kv.txn(
        [(c.key, *c.target()[:1], c.op, c.target()[1]) for c in compares],
        [(o.op, o.key, o.value if o.op == "put" else "", 0) for o in success],
        [(o.op, o.key, o.value if o.op == "put" else "", 0) for o in failure],
        index,
    )
    results = tuple((r.err, r.value, r.version) for r in reply.results)
    request = Txn(tuple(compares), success, failure)
    return KVInput("txn", "", txn=request), KVOutput(succeeded=reply.succeeded, results=results)


def _unknown_allowed(inp: KVInput) -> bool:
    """A txn of unknown outcome must not write in its failure branch (see KV_OPS_MODEL)."""
    return inp.txn is None or not any(o.op in ("put", "delete") for o in inp.txn.failure)


def simulate_ops(rng: random.Random, n_ops: int, cancelled: float = 0.1) -> tuple[list, bool]:
    """A history of the machine (ops take effect at random points of their intervals; some
    never return, some writes answer Maybe); sometimes one output is corrupted. Returns the
    ops and whether one was corrupted."""
    points = []
    for i in range(n_ops):
        call = rng.uniform(0, 10)
        ret = call + rng.uniform(0.01, 4)
        points.append((rng.uniform(call, ret), i, call, ret))
    kv, ops = VersionedKV(), []
    for index, (_point, i, call, ret) in enumerate(sorted(points), 1):
        before = kv.items()
        inp, out = machine_op(rng, kv, index)
        unknown = rng.random()
        if unknown < cancelled and _unknown_allowed(inp):
            # It never returned, or (a txn that answered Maybe, an append SessionExpired)
            # returned without knowing: either way it took effect or (half the time) not.
            returned = inp.op in ("txn", "append") and unknown < cancelled / 2
            ops.append(Operation(f"c{i}", inp, call, None, ret if returned else None, returned))
            if rng.random() < 0.5:  # it never took effect
                kv.replace(before, {}, 0)
            continue
        if inp.op in ("put", "delete") and rng.random() < 0.15:
            out = KVOutput(err="Maybe")
        ops.append(Operation(f"c{i}", inp, call, out, ret))
    corrupted = rng.random() < 0.5
    if corrupted:
        victims = [i for i, op in enumerate(ops) if op.output is not None]
        if victims:
            victim = rng.choice(victims)
            ops[victim] = dataclasses.replace(ops[victim], output=corrupt_ops(rng, ops[victim]))
    rng.shuffle(ops)
    return ops, corrupted


def corrupt_ops(rng: random.Random, op: Operation) -> KVOutput:
    out = op.output
    if op.input.op == "get":
        return dataclasses.replace(out, value=rng.choice(["", "x", "yx"]), version=rng.randrange(3))
    if op.input.op == "range":
        if out.items and rng.random() < 0.5:
            dropped = list(out.items)
            del dropped[rng.randrange(len(dropped))]
            return dataclasses.replace(out, items=tuple(dropped))
        return dataclasses.replace(out, items=(*out.items, ("b0", "x", 1)))
    if op.input.op == "txn":
        if out.results and rng.random() < 0.5:
            (err, value, version), *rest = out.results
            return dataclasses.replace(out, results=((err, value, version + 1), *rest))
        return dataclasses.replace(out, succeeded=not out.succeeded)
    flip = {"OK": "Version", "Version": "OK", "NoKey": "OK", "Maybe": "OK"}
    return dataclasses.replace(out, err=flip[out.err])


def test_the_kv_with_every_op_agrees_with_brute_force(seed: int) -> None:
    """Histories of up to 7 ops of every kind on three keys: the checker (partitioned by keys
    touched, with and without its shortcuts) agrees with brute force over the whole history
    (unpartitioned); and every history the machine made, uncorrupted, is accepted."""
    whole = dataclasses.replace(KV_OPS_MODEL, partition=None)
    plain = dataclasses.replace(KV_OPS_MODEL, read_only=None)
    rng = random.Random(seed)
    verdicts = {True: 0, False: 0}
    for _ in range(1000):
        ops, corrupted = simulate_ops(rng, rng.randrange(1, 8))
        expected = brute_force(whole, ops)
        description = "\n".join(KV_OPS_MODEL.describe(op) for op in ops)
        assert expected or corrupted, description
        assert check_operations(KV_OPS_MODEL, ops).ok is expected, description
        assert check_operations(plain, ops).ok is expected, description
        verdicts[expected] += 1
    assert min(verdicts.values()) > 150, verdicts


def test_the_kv_with_every_op_agrees_with_a_plain_search(seed: int) -> None:
    """Up to 13 ops, many never returning: against the plain search, unpartitioned."""
    whole = dataclasses.replace(KV_OPS_MODEL, partition=None)
    rng = random.Random(seed)
    verdicts = {True: 0, False: 0}
    for _ in range(400):
        cancelled = rng.choice([0.1, 0.3, 0.6])
        ops, corrupted = simulate_ops(rng, rng.randrange(1, 14), cancelled)
        expected = plain_search(whole, ops)
        description = "\n".join(KV_OPS_MODEL.describe(op) for op in ops)
        assert expected or corrupted, description
        assert check_operations(KV_OPS_MODEL, ops).ok is expected, description
        verdicts[expected] += 1
    assert min(verdicts.values()) > 30, verdicts
