"""The linearizability checker against brute force, and on known anomalies."""

from __future__ import annotations

import itertools
import random

import pytest

from trioraft.testing import Operation, check
from trioraft.testing._linearizability import INITIAL, step


def brute_force(ops: list[Operation]) -> bool:
    """Try every order of every key's ops that respects real time."""
    keys = {op.key for op in ops}
    for key in keys:
        mine = [op for op in ops if op.key == key and not (op.kind == "get" and op.ret is None)]
        if not any(_legal_order(order) for order in itertools.permutations(mine)):
            return False
    return True


def _legal_order(order: tuple[Operation, ...]) -> bool:
    for i, earlier in enumerate(order):
        for later in order[i + 1 :]:
            if later.ret is not None and later.ret < earlier.call:
                return False  # `later` finished before `earlier` started
    state = INITIAL
    for op in order:
        legal, state = step(state, op)
        if not legal:
            return False
    return True


def simulate(rng: random.Random, n_ops: int, n_keys: int) -> list[Operation]:
    """A history produced by a real sequential execution at random linearization points,
    sometimes with an output corrupted (making most such histories illegal)."""
    ops = []
    points = []
    for i in range(n_ops):
        call = rng.uniform(0, 10)
        ret = call + rng.uniform(0.01, 4)
        point = rng.uniform(call, ret)
        points.append((point, i, call, ret))
    states = {f"k{j}": INITIAL for j in range(n_keys)}
    for _point, i, call, ret in sorted(points):
        key = rng.choice(list(states))
        value, version = states[key]
        client = f"c{i}"
        if rng.random() < 0.45:
            op = Operation(
                client, "get", key, value, version, "OK" if version else "NoKey", call, ret
            )
        else:
            want = version if rng.random() < 0.6 else rng.randrange(0, 3)
            new_value = rng.choice("abc")
            if want == version:
                states[key] = (new_value, version + 1)
                err = "OK"
            else:
                err = "NoKey" if version == 0 else "Version"
            if rng.random() < 0.15:
                err = "Maybe"
            never = rng.random() < 0.1
            op = Operation(
                client,
                "put",
                key,
                new_value,
                want,
                "" if never else err,
                call,
                None if never else ret,
            )
        ops.append(op)
    if rng.random() < 0.5:
        victim = rng.randrange(len(ops))
        op = ops[victim]
        if op.kind == "get":
            ops[victim] = Operation(
                op.client,
                "get",
                op.key,
                rng.choice("abc"),
                rng.randrange(3),
                op.err,
                op.call,
                op.ret,
            )
        elif op.ret is not None:
            flipped = {"OK": "Version", "Version": "OK", "NoKey": "OK", "Maybe": "Maybe"}[op.err]
            ops[victim] = Operation(
                op.client, "put", op.key, op.value, op.version, flipped, op.call, op.ret
            )
    return ops


def test_agrees_with_brute_force_on_random_histories(seed: int) -> None:
    rng = random.Random(seed)
    verdicts = {True: 0, False: 0}
    for _ in range(1500):
        ops = simulate(rng, rng.randrange(1, 8), rng.randrange(1, 3))
        expected = brute_force(ops)
        result = check(ops)
        assert result.ok is expected, "\n".join(op.describe() for op in ops)
        verdicts[expected] += 1
    assert min(verdicts.values()) > 200, verdicts  # both verdicts well exercised


def op(client, kind, value, version, err, call, ret, key="k"):
    return Operation(client, kind, key, value, version, err, call, ret)


def test_stale_read_is_caught() -> None:
    history = [
        op("a", "put", "x", 0, "OK", 0, 1),
        op("a", "put", "y", 1, "OK", 2, 3),
        op("b", "get", "x", 1, "OK", 4, 5),  # starts after y was acknowledged
    ]
    result = check(history)
    assert result.ok is False and result.failing_key == "k"
    assert "not linearizable" in result.account and "get('k')" in result.account


def test_lost_write_is_caught() -> None:
    history = [
        op("a", "put", "x", 0, "OK", 0, 1),
        op("b", "get", "", 0, "NoKey", 2, 3),
    ]
    assert check(history).ok is False


def test_double_applied_put_is_caught() -> None:
    history = [
        op("a", "put", "x", 0, "OK", 0, 1),
        op("b", "get", "x", 2, "OK", 2, 3),  # version 2: the put applied twice
    ]
    assert check(history).ok is False


def test_maybe_may_or_may_not_apply() -> None:
    applied = [op("a", "put", "x", 0, "Maybe", 0, 1), op("b", "get", "x", 1, "OK", 2, 3)]
    not_applied = [  # b's put won; a's retry then saw Version and could not tell
        op("b", "put", "y", 0, "OK", 0, 1),
        op("a", "put", "x", 0, "Maybe", 0.5, 2),
        op("c", "get", "y", 1, "OK", 3, 4),
    ]
    assert check(applied).ok and check(not_applied).ok
    # With no other writer, a retry can only see Version if the first attempt applied.
    alone = [op("a", "put", "x", 0, "Maybe", 0, 1), op("b", "get", "", 0, "NoKey", 2, 3)]
    assert check(alone).ok is False


def test_pending_ops() -> None:
    pending_put = [op("a", "put", "x", 0, "", 0, None), op("b", "get", "x", 1, "OK", 5, 6)]
    assert check(pending_put).ok
    pending_get = [op("a", "get", "zzz", 9, "OK", 0, None)]
    assert check(pending_get).ok


def test_concurrent_ops_may_take_either_order() -> None:
    history = [
        op("a", "put", "x", 0, "OK", 0, 10),
        op("b", "get", "", 0, "NoKey", 1, 2),
        op("c", "get", "x", 1, "OK", 3, 4),
    ]
    assert check(history).ok
    swapped = [history[0], op("b", "get", "x", 1, "OK", 1, 2), op("c", "get", "", 0, "NoKey", 3, 4)]
    assert check(swapped).ok is False


def test_keys_are_independent_and_smallest_failure_reported() -> None:
    history = [op("a", "put", "x", 0, "OK", 0, 1, key=f"k{i}") for i in range(3)]
    history += [op("b", "get", "", 0, "NoKey", 2, 3, key="k1")]
    history += [
        op("c", "put", "x", 0, "OK", 0, 1, key="big"),
        op("c", "put", "x", 0, "OK", 2, 3, key="big"),
        op("c", "put", "y", 0, "OK", 4, 5, key="big"),
    ]
    result = check(history)
    assert result.ok is False and result.failing_key == "k1"


@pytest.mark.parametrize("clients", [5, 10])
def test_long_concurrent_history_is_fast(clients: int) -> None:
    """Thousands of ops on one key with overlapping clients stay well within the timeout."""
    rng = random.Random(clients)
    ops, version, now = [], 0, 0.0
    for i in range(3000):
        call = now
        now += rng.uniform(0.001, 0.002)
        if rng.random() < 0.5:
            ops.append(
                op(
                    f"c{i % clients}",
                    "get",
                    str(version),
                    version,
                    "OK" if version else "NoKey",
                    call - 0.004,
                    now + 0.004,
                )
            )
        else:
            ops.append(
                op(
                    f"c{i % clients}",
                    "put",
                    str(version + 1),
                    version,
                    "OK",
                    call - 0.004,
                    now + 0.004,
                )
            )
            version += 1
    fixed = []
    for o in ops:  # values follow the version they read or wrote
        if o.kind == "get":
            fixed.append(
                op(
                    o.client,
                    "get",
                    str(o.version) if o.version else "",
                    o.version,
                    o.err,
                    o.call,
                    o.ret,
                )
            )
        else:
            fixed.append(o)
    assert check(fixed, timeout=30).ok is True
