"""The retry rule, tombstones and txn leases of the KV state machine, probed directly with
ops a faulty peer could log and snapshots it could send: a malformed op answers ``BadOp``
and changes nothing, a bad snapshot raises ``ValueError`` only, and no retried write
applies twice, tombstones evicted or not."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.strategies import JSON_VALUES
from trioraft.kv.machine import KVMachine


def put(key: str, value: str, version: int, **extra: Any) -> dict[str, Any]:
    return {"op": "put", "key": key, "value": value, "version": version, **extra}


def delete(key: str, version: int, **extra: Any) -> dict[str, Any]:
    return {"op": "delete", "key": key, "version": version, **extra}


def txn(compare: list, success: list, failure: list | None = None, **extra: Any) -> dict:
    return {"op": "txn", "key": "", "compare": compare, "success": success,
            "failure": failure or [], **extra}  # fmt: skip


def version_is(key: str, version: int) -> dict[str, Any]:
    return {"key": key, "target": "version", "op": "=", "operand": version}


def machine_with_a_deleted_key() -> KVMachine:
    """ "gone" deleted at 2, "live" at version 1: a retry seen before 2 meets the tombstone."""
    m = KVMachine()
    m.apply(put("gone", "x", 0), 1)
    m.apply(delete("gone", 1), 2)
    m.apply(put("live", "y", 0), 3)
    return m


#: Retried writes no server would log. Each names a deleted key (so the retry rule sees a
#: deletion after ``retry_after``) or a live one; either way: BadOp, nothing changes.
MALFORMED_RETRIES: list[dict[str, Any]] = [
    put("gone", "v", 0, retry_after=True),
    put("gone", "v", 0, retry_after=-1),
    put("gone", "v", 0, retry_after=1.0),
    put("gone", "v", 0, retry_after="0"),
    put("gone", "v", 0, retry_after=[0]),
    put("gone", "v", 0, retry_after={}),
    put("live", "v", 1, retry_after=False),
    delete("live", 1, retry_after=-(2**63)),
    {"op": "put", "key": "gone", "value": 5, "version": 0, "retry_after": 0},
    {"op": "put", "key": "gone", "value": "v", "version": "0", "retry_after": 0},
    {"op": "put", "key": "gone", "value": "v", "version": -1, "retry_after": 0},
    {"op": "put", "key": "gone", "value": "v", "retry_after": 0},
    put("gone", "v", 0, lease=-1, retry_after=0),
    put("gone", "v", 0, lease=True, retry_after=0),
    {"op": "delete", "key": "gone", "retry_after": 0},
    delete("gone", True, retry_after=0),
    delete("gone", 1.0, retry_after=0),
    delete("gone", None, retry_after=0),  # type: ignore[arg-type]
    txn([7], [], retry_after=0),
    txn([{"key": "gone"}], [], retry_after=0),
    txn([{"key": ["gone"], "target": "version", "op": "=", "operand": 0}], [], retry_after=0),
    txn([], [{"op": "put", "key": "gone", "value": 1}], retry_after=0),
    txn([], [{"op": "put", "key": {"k": 1}, "value": "v"}], retry_after=0),
    txn([], [{"op": "delete", "key": "gone", "lease": 1}], retry_after=0),
    txn([], [{"op": "get", "key": "gone", "lease": 1}], retry_after=0),
    txn([], [{"op": "put", "key": "gone", "value": "v", "lease": True}], retry_after=0),
    txn([], [{"op": "put", "key": "gone", "value": "v", "lease": -3}], retry_after=0),
    txn([], [put("gone", "v", 0)], ["delete"], retry_after=0),
    txn(version_is("gone", 0), [], retry_after=0),  # type: ignore[arg-type]
    {"op": "txn", "key": "", "compare": [], "success": {}, "failure": [], "retry_after": 0},
    {"op": "txn", "compare": [], "success": [], "failure": [], "retry_after": 0},
    {"op": "put", "key": None, "value": "v", "version": 0, "retry_after": 0},
]


@pytest.mark.parametrize("op", MALFORMED_RETRIES, ids=lambda op: json.dumps(op)[:70])
def test_a_malformed_retried_write_answers_bad_op_and_changes_nothing(op: dict) -> None:
    """Whether or not the key it names was deleted after ``retry_after``: a put or delete
    that is not one answered ``Version`` before (a conflict, which the client turns into
    Maybe), as if it could have applied."""
    m = machine_with_a_deleted_key()
    before = m.snapshot()
    assert m.apply(op, 4).err == "BadOp"
    assert m.snapshot() == before


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["put", "delete", "txn", "get", "append", "range", "open"]),
    fields=st.dictionaries(
        st.sampled_from(
            [
                "key",
                "value",
                "version",
                "lease",
                "retry_after",
                "compare",
                "success",
                "failure",
                "session",
                "seq",
                "nonce",
            ]
        ),
        JSON_VALUES,
        max_size=6,
    ),
)
def test_any_logged_op_with_a_retry_after_never_raises(kind: str, fields: dict) -> None:
    """A faulty peer's entry: ``apply`` answers (it never raises), and a ``BadOp`` answer
    changes nothing."""
    m = machine_with_a_deleted_key()
    before = m.snapshot()
    reply = m.apply({"op": kind, **fields}, 4)
    if reply.err == "BadOp":
        assert m.snapshot() == before


def test_a_retried_txn_whose_compares_fail_runs_no_branch() -> None:
    """A txn "create k, else overwrite it" applies its success branch, its reply lost; its
    retry fails the compare *because* the first attempt applied, so running the failure
    branch would apply the txn a second time (k at version 2, "else" written over "first").
    The client reports Maybe for any retried txn that did not succeed: it never sees the
    failure branch's results, so a retry whose compares fail must run nothing."""
    m = KVMachine()
    create_else_overwrite = txn(
        [version_is("k", 0)],
        [{"op": "put", "key": "k", "value": "first"}],
        [{"op": "put", "key": "k", "value": "else"}, {"op": "delete", "key": "other"}],
    )
    m.apply(put("other", "o", 0), 1)
    first = m.apply(create_else_overwrite, 3)  # the client had seen 2
    assert first.succeeded
    before = m.snapshot()
    again = m.apply({**create_else_overwrite, "retry_after": 2}, 4)
    assert (again.err, again.succeeded) == ("OK", False)
    assert m.snapshot() == before, "a retried txn applied a second time (its failure branch)"
    got = m.apply({"op": "get", "key": "k"}, 5)
    assert (got.value, got.version) == ("first", 1)
    # A first attempt whose compares fail still runs the failure branch.
    reply = m.apply(create_else_overwrite, 6)
    assert not reply.succeeded and [r.err for r in reply.results] == ["OK", "OK"]
    assert m.apply({"op": "get", "key": "k"}, 7).value == "else"


@settings(max_examples=200, deadline=None)
@given(
    max_tombstones=st.integers(1, 4),
    steps=st.lists(
        st.tuples(st.sampled_from(["first", "delete", "churn", "retry"]), st.integers(0, 3)),
        max_size=40,
    ),
)
def test_no_retried_write_applies_twice_however_tombstones_are_evicted(
    max_tombstones: int, steps: list[tuple[str, int]]
) -> None:
    """Clients create keys (a put at version 0, a txn "create if absent", or one "create,
    else overwrite"), their replies lost; other keys are created and deleted to evict
    tombstones; the retries come in any order, any number of times. A write whose first
    attempt applied never applies again."""
    m = KVMachine()
    m.kv.max_tombstones = max_tombstones
    index = 0
    pending: list[tuple[dict, int, bool]] = []  # (op, seen before it, whether it applied)
    churn = 0

    def step(op: dict) -> bool:
        """Apply ``op`` at the next index; whether it changed any key."""
        nonlocal index
        index += 1
        before = m.kv.items()
        m.apply(op, index)
        return m.kv.items() != before

    for kind, n in steps:
        key = f"k{n}"
        if kind == "first":
            seen = index
            write = [{"op": "put", "key": key, "value": f"w{index}"}]
            op = [
                put(key, f"w{index}", 0),
                txn([version_is(key, 0)], write),
                txn([version_is(key, 0)], write, write),
            ][n % 3]
            pending.append((op, seen, step(op)))
        elif kind == "delete":
            version = m.kv.get(key).version
            if version:
                assert step(delete(key, version))
        elif kind == "churn":
            churn += 1
            step(put(f"churn{churn}", "c", 0))
            step(delete(f"churn{churn}", 1))
        elif pending:
            op, seen, applied = pending[n % len(pending)]
            retried = step({**op, "retry_after": seen})
            if applied:
                assert not retried, f"{op} applied twice (max_tombstones={max_tombstones})"
            pending[n % len(pending)] = (op, seen, applied or retried)


def test_a_txn_put_with_a_lease_attaches_only_the_last_write_of_its_key() -> None:
    m = KVMachine()
    lease = m.apply({"op": "lease_grant", "key": "", "ttl": 60}, 1).lease
    reply = m.apply(
        txn(
            [],
            [
                {"op": "put", "key": "a", "value": "1", "lease": lease},
                {"op": "put", "key": "a", "value": "2"},  # last write: no lease
                {"op": "put", "key": "b", "value": "1"},
                {"op": "put", "key": "b", "value": "2", "lease": lease},
                {"op": "put", "key": "c", "value": "1", "lease": lease},
                {"op": "delete", "key": "c"},
            ],
        ),
        2,
    )
    assert reply.succeeded
    assert dict(m.leases.owner) == {"b": lease}
    # A lease named in the branch that does not run is still checked: nothing applies.
    before = m.snapshot()
    reply = m.apply(
        txn(
            [],
            [{"op": "put", "key": "d", "value": "1"}],
            [{"op": "put", "key": "d", "value": "1", "lease": lease + 1}],
        ),
        3,
    )
    assert reply.err == "NoLease" and m.snapshot() == before
    m.apply({"op": "lease_revoke", "key": "", "lease": lease}, 4)
    assert m.apply({"op": "get", "key": "b"}, 5).version == 0
    assert m.apply({"op": "get", "key": "a"}, 5).value == "2"
    assert m.kv.tombstones == {"c": 2, "b": 4}


def snapshot_of(**changes: Any) -> bytes:
    m = machine_with_a_deleted_key()
    state = json.loads(m.snapshot())
    state.update(changes)
    return json.dumps(state).encode()


HOSTILE_SNAPSHOTS = [
    snapshot_of(tombstones=[]),
    snapshot_of(tombstones="gone"),
    snapshot_of(tombstones=None),
    snapshot_of(tombstones=7),
    snapshot_of(tombstones={"gone": -1}),
    snapshot_of(tombstones={"gone": True}),
    snapshot_of(tombstones={"gone": 2.0}),
    snapshot_of(tombstones={"gone": "2"}),
    snapshot_of(tombstones={"gone": None}),
    snapshot_of(tombstones={"gone": [2]}),
    snapshot_of(tombstones={"gone": {"index": 2}}),
    snapshot_of(forgotten_through=-1),
    snapshot_of(forgotten_through=True),
    snapshot_of(forgotten_through=False),
    snapshot_of(forgotten_through=0.5),
    snapshot_of(forgotten_through="0"),
    snapshot_of(forgotten_through=None),
    snapshot_of(forgotten_through=[0]),
    snapshot_of(forgotten_through={}),
    b'{"format":2,"kv":{},"sessions":{},"opened":0,"tombstones":{"a":1e999}}',
    b'{"format":2,"kv":{},"sessions":{},"opened":0,"forgotten_through":-Infinity}',
    b'{"format":2,"kv":{},"sessions":{},"opened":0,"tombstones":{"a":NaN}}',
    b'{"format":2,"kv":{},"sessions":{},"opened":0,"tombstones":' + b"[" * 50_000 + b"}",
]


@pytest.mark.parametrize("data", HOSTILE_SNAPSHOTS, ids=lambda d: d[-60:].decode())
def test_a_snapshot_with_bad_tombstones_raises_value_error_and_restores_nothing(
    data: bytes,
) -> None:
    with pytest.raises(ValueError, match="not a KV snapshot"):
        KVMachine.check_snapshot(data)
    m = machine_with_a_deleted_key()
    before = m.snapshot()
    with pytest.raises(ValueError, match="not a KV snapshot"):
        m.restore(data)
    assert m.snapshot() == before


@settings(max_examples=300, deadline=None)
@given(tombstones=JSON_VALUES, forgotten_through=JSON_VALUES)
def test_any_tombstones_either_restore_or_raise_value_error(
    tombstones: Any, forgotten_through: Any
) -> None:
    data = snapshot_of(tombstones=tombstones, forgotten_through=forgotten_through)
    m = KVMachine()
    try:
        m.restore(data)
    except ValueError:
        return
    # Restored: the machine works, and its retries are judged by what it restored.
    assert all(type(i) is int and i >= 0 for i in m.kv.tombstones.values())
    assert type(m.kv.forgotten_through) is int and m.kv.forgotten_through >= 0
    m.apply(put("gone", "v", 0, retry_after=0), 10**6)
    KVMachine.check_snapshot(m.snapshot())


def test_a_huge_tombstone_index_only_refuses_retries() -> None:
    """Indexes beyond any log a peer could send: retries are refused (a Maybe), first
    attempts apply, and the state snapshots and restores as it was."""
    data = snapshot_of(tombstones={"gone": 2**200}, forgotten_through=2**70)
    m = KVMachine()
    m.restore(data)
    assert m.apply(put("gone", "v", 0, retry_after=2**64), 4).err == "Version"
    assert m.apply(put("gone", "v", 0), 5).err == "OK"
    again = KVMachine()
    again.restore(m.snapshot())
    assert again.snapshot() == m.snapshot()


def test_a_copy_shares_no_state_with_its_machine() -> None:
    m = machine_with_a_deleted_key()
    lease = m.apply({"op": "lease_grant", "key": "", "ttl": 60}, 4).lease
    m.apply(put("leased", "v", 0, lease=lease), 5)
    copy = m.copy()
    assert copy.snapshot() == m.snapshot()
    before = m.snapshot()
    copy.apply(delete("live", 1), 6)
    copy.apply({"op": "lease_revoke", "key": "", "lease": lease}, 7)
    copy.apply({"op": "open", "key": "", "nonce": "n"}, 8)
    assert m.snapshot() == before
    assert m.kv.tombstones == {"gone": 2}


def test_a_retry_that_saw_an_index_this_history_has_not_reached_is_refused() -> None:
    """The client saw index 50 of an older history (the store was since restored from a
    backup at 0, or restarted empty). Its create applies at 1, the reply lost; the key is
    deleted at 2. The tombstone (2) is not after 50, so only the index tells that the retry
    (at 3) cannot be judged: it is refused, and nothing applies twice."""
    m = KVMachine()
    create = put("k", "once", 0)
    assert m.apply(create, 1).err == "OK"
    assert m.apply(delete("k", 1), 2).err == "OK"
    assert m.apply({**create, "retry_after": 50}, 3).err == "Version"
    assert m.apply({**delete("j", 1), "retry_after": 4}, 4).err == "Version"
    reply = m.apply({**txn([version_is("k", 0)], [create]), "retry_after": 5}, 5)
    assert (reply.err, reply.succeeded) == ("OK", False)
    assert m.kv.get("k").version == 0
    # A retry that saw only earlier indexes applies as before.
    assert m.apply({**create, "retry_after": 2}, 6).err == "OK"
