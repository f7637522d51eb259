"""The KV state machine's ops, applied directly: indexes, delete, range and txn, hostile
ops, and snapshots (of this format and of the one before indexes)."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioraft.kv.machine import KVMachine
from trioraft.kv.messages import MAX_RANGE_CHARS, KeyRecord, KeyResult


def put(key: str, value: str, version: int) -> dict[str, Any]:
    return {"op": "put", "key": key, "value": value, "version": version}


def delete(key: str, version: int) -> dict[str, Any]:
    return {"op": "delete", "key": key, "version": version}


def get(key: str) -> dict[str, Any]:
    return {"op": "get", "key": key}


def range_op(prefix: str = "", start: str = "", end: str = "", limit: int = 1000) -> dict:
    return {"op": "range", "key": "", "prefix": prefix, "start": start, "end": end,
            "limit": limit}  # fmt: skip


def txn(compare: list[dict], success: list[dict], failure: list[dict] | None = None) -> dict:
    return {"op": "txn", "key": "", "compare": compare, "success": success,
            "failure": failure or []}  # fmt: skip


def test_every_change_records_its_index_and_a_recreated_key_a_new_create_index() -> None:
    m = KVMachine()
    assert m.apply(put("k", "a", 0), 5).err == "OK"
    reply = m.apply(get("k"), 6)
    assert (reply.value, reply.version, reply.mod_index, reply.create_index) == ("a", 1, 5, 5)
    assert m.apply(put("k", "b", 1), 7).err == "OK"
    reply = m.apply(get("k"), 8)
    assert (reply.version, reply.mod_index, reply.create_index) == (2, 7, 5)
    op = {"op": "append", "key": "k", "value": "c", "session": "", "seq": 1}
    assert m.apply(op, 9).err == "SessionExpired"  # no session: nothing changes
    session = m.apply({"op": "open", "key": "", "nonce": "n"}, 10).session
    assert m.apply({**op, "session": session}, 11).err == "OK"
    reply = m.apply(get("k"), 12)
    assert (reply.value, reply.version, reply.mod_index, reply.create_index) == ("bc", 3, 11, 5)
    assert m.apply(delete("k", 3), 13).err == "OK"
    reply = m.apply(get("k"), 14)
    assert (reply.err, reply.version, reply.mod_index, reply.create_index) == ("NoKey", 0, 0, 0)
    assert m.apply(put("k", "again", 0), 15).err == "OK"
    reply = m.apply(get("k"), 16)
    assert (reply.version, reply.mod_index, reply.create_index) == (1, 15, 15)


def test_delete_is_conditional_on_the_version_like_put() -> None:
    m = KVMachine()
    assert m.apply(delete("k", 0), 1).err == "NoKey"
    assert m.apply(delete("k", 1), 2).err == "NoKey"
    m.apply(put("k", "v", 0), 3)
    assert m.apply(delete("k", 0), 4).err == "Version"
    assert m.apply(delete("k", 2), 5).err == "Version"
    assert m.apply(get("k"), 6).value == "v"
    assert m.apply(delete("k", 1), 7).err == "OK"
    assert m.apply(delete("k", 1), 8).err == "NoKey"  # what a retry of it meets
    assert len(m.kv) == 0


def retry(op: dict[str, Any], seen: int) -> dict[str, Any]:
    """``op`` sent again, its first attempt sent after its client had seen index ``seen``."""
    return {**op, "retry_after": seen}


def test_a_retried_write_never_applies_twice_across_a_delete() -> None:
    """A put at version 0 applies (its reply lost), the key is deleted: the put's retry
    would find it absent and apply again. The tombstone of the delete refuses it; retries
    of writes on keys not deleted since apply as they always did."""
    m = KVMachine()
    m.apply(put("other", "x", 0), 3)
    assert m.apply(put("k", "v", 0), 5).err == "OK"  # the first attempt (seen: 4)
    assert m.apply(delete("k", 1), 6).err == "OK"
    assert m.apply(retry(put("k", "v", 0), 4), 7).err == "Version"  # the client says Maybe
    assert m.apply(get("k"), 8).version == 0
    # The same for a delete at a version the key comes back to, and a txn creating it.
    m.apply(put("k", "w", 0), 9)
    assert m.apply(delete("k", 1), 10).err == "OK"
    m.apply(put("k", "w", 0), 11)
    assert m.apply(retry(delete("k", 1), 9), 12).err == "Version"
    create = txn([{"key": "k", "target": "version", "op": "=", "operand": 0}],
                 [{"op": "put", "key": "k", "value": "t"}])  # fmt: skip
    m.apply(delete("k", 1), 13)
    reply = m.apply(retry(create, 12), 14)
    assert (reply.err, reply.succeeded) == ("OK", False)
    assert m.apply(get("k"), 15).version == 0
    # A retry whose first attempt never arrived, on a key not deleted since: applied.
    assert m.apply(retry(put("other", "y", 1), 13), 16).err == "OK"
    assert m.apply(retry(put("new", "z", 0), 14), 17).err == "OK"
    # A key deleted before the client's first attempt does not stop its retry.
    assert m.apply(retry(put("k", "u", 0), 14), 18).err == "OK"


def test_tombstones_are_bounded_and_a_retry_older_than_those_forgotten_is_refused() -> None:
    m = KVMachine()
    m.kv.max_tombstones = 2
    for i, key in enumerate("abc"):
        m.apply(put(key, "v", 0), 10 * i + 1)
        m.apply(delete(key, 1), 10 * i + 2)  # deleted at 2, 12, 22
    assert m.kv.tombstones == {"b": 12, "c": 22} and m.kv.forgotten_through == 2
    assert m.apply(retry(put("z", "v", 0), 1), 30).err == "Version"  # "z" too: may be
    assert m.apply(retry(put("z", "v", 0), 2), 31).err == "OK"
    restored = KVMachine()
    restored.restore(m.snapshot())
    assert (restored.kv.tombstones, restored.kv.forgotten_through) == ({"b": 12, "c": 22}, 2)
    copy = m.copy()
    assert copy.snapshot() == m.snapshot()


def test_a_lease_expiry_leaves_a_tombstone() -> None:
    m = KVMachine()
    lease = m.apply({"op": "lease_grant", "key": "", "ttl": 10}, 1).lease
    m.apply({**put("k", "v", 0), "lease": lease}, 2)
    m.apply({"op": "lease_revoke", "key": "", "lease": lease}, 3)
    assert m.kv.tombstones == {"k": 3}
    assert m.apply(retry({**put("k", "v", 0), "lease": 0}, 1), 4).err == "Version"


def test_range_answers_keys_in_order_with_a_cursor_for_the_rest() -> None:
    m = KVMachine()
    for i, key in enumerate(["b/2", "a", "b/1", "b/3", "c", "b"]):
        m.apply(put(key, key.upper(), 0), i + 1)
    page = m.apply(range_op(prefix="b/"), 10)
    assert [item.key for item in page.items] == ["b/1", "b/2", "b/3"]
    assert page.items[0] == KeyRecord("b/1", "B/1", 1, 3, 3)
    assert (page.index, page.more) == (10, False)
    page = m.apply(range_op(start="a", end="b/3", limit=2), 11)
    assert ([item.key for item in page.items], page.more, page.next) == (["a", "b"], True, "b/1")
    page = m.apply(range_op(start=page.next, end="b/3", limit=2), 12)
    assert ([item.key for item in page.items], page.more) == (["b/1", "b/2"], False)
    assert [item.key for item in m.apply(range_op(), 13).items] == sorted(m.kv.items())
    m.apply(delete("b/2", 1), 14)  # the sorted keys follow deletes and creates
    m.apply(put("b/0", "", 0), 15)
    page = m.apply(range_op(prefix="b/", start="b/0"), 16)
    assert [item.key for item in page.items] == ["b/0", "b/1", "b/3"]
    assert m.apply(range_op(prefix="zz"), 17).items == []


def test_a_range_page_is_bounded_in_characters_but_holds_at_least_one_key() -> None:
    m = KVMachine()
    big = "x" * (MAX_RANGE_CHARS // 2)
    for key in ("a", "b", "c"):
        m.apply(put(key, big, 0), 1)
    page = m.apply(range_op(), 2)
    assert ([item.key for item in page.items], page.more, page.next) == (["a"], True, "b")
    m.apply(put("huge", "y" * (2 * MAX_RANGE_CHARS), 0), 3)
    page = m.apply(range_op(start="huge"), 4)
    assert [item.key for item in page.items] == ["huge"]


@given(
    st.lists(st.tuples(st.sampled_from(["put", "delete"]), st.text("ab/", max_size=3))),
    st.text("ab/", max_size=2),
    st.integers(1, 4),
)
def test_paging_through_a_range_sees_each_key_once_in_order(
    changes: list[tuple[str, str]], prefix: str, limit: int
) -> None:
    m = KVMachine()
    for i, (kind, key) in enumerate(changes):
        version = m.apply(get(key), i).version
        m.apply(put(key, "v", version) if kind == "put" else delete(key, version), i)
    expected = sorted(key for key in m.kv.items() if key.startswith(prefix))
    seen: list[str] = []
    start = ""
    while True:
        page = m.apply(range_op(prefix=prefix, start=start, limit=limit), 99)
        assert len(page.items) <= limit
        seen += [item.key for item in page.items]
        if not page.more:
            break
        start = page.next
    assert seen == expected


def test_txn_compares_every_target_and_runs_one_branch_at_one_index() -> None:
    m = KVMachine()
    m.apply(put("a", "1", 0), 3)
    m.apply(put("a", "2", 1), 4)  # a: value 2, version 2, mod 4, create 3
    holds = [
        {"key": "a", "target": "value", "op": "=", "operand": "2"},
        {"key": "a", "target": "version", "op": ">", "operand": 1},
        {"key": "a", "target": "mod_index", "op": "<", "operand": 5},
        {"key": "a", "target": "create_index", "op": "!=", "operand": 4},
        {"key": "absent", "target": "version", "op": "=", "operand": 0},
        {"key": "absent", "target": "value", "op": "=", "operand": ""},
    ]
    reply = m.apply(
        txn(
            holds,
            [
                {"op": "put", "key": "b", "value": "B"},
                {"op": "get", "key": "a"},
                {"op": "delete", "key": "a"},
                {"op": "delete", "key": "zz"},
                {"op": "put", "key": "b", "value": "BB"},
            ],
        ),
        7,
    )
    assert (reply.err, reply.succeeded, reply.index) == ("OK", True, 7)
    assert reply.results == [
        KeyResult("OK", version=1, mod_index=7, create_index=7),
        KeyResult("OK", "2", 2, 4, 3),
        KeyResult("OK"),
        KeyResult("NoKey"),
        KeyResult("OK", version=2, mod_index=7, create_index=7),
    ]
    assert m.apply(get("a"), 8).err == "NoKey"
    for failing in holds:
        compare = {**failing, "op": {"=": "!=", "!=": "=", "<": ">", ">": "<"}[failing["op"]]}
        if failing["key"] == "a":
            continue  # "a" is gone now
        reply = m.apply(txn([compare], [put("x", "s", 0)], [{"op": "get", "key": "b"}]), 9)
        assert (reply.succeeded, reply.results) == (False, [KeyResult("OK", "BB", 2, 7, 7)])
    assert m.apply(get("x"), 10).err == "NoKey"
    assert m.apply(txn([], []), 11).succeeded  # no compare: success


#: Ops no server would log: each must answer BadOp and change nothing, on every replica.
HOSTILE_OPS: list[Any] = [
    None,
    [],
    "get",
    {"op": "put", "key": 1, "value": "v", "version": 0},
    {"op": "put", "key": "k", "value": ["v"], "version": 0},
    {"op": "put", "key": "k", "value": "v", "version": "0"},
    {"op": "put", "key": "k", "value": "v", "version": True},
    {"op": "put", "key": "k", "value": "v", "version": -1},
    {"op": "delete", "key": "k"},
    {"op": "delete", "key": "k", "version": 1.0},
    {"op": "append", "key": "k", "value": "v", "session": None, "seq": 1},
    {"op": "open", "key": "k"},
    {"op": "drop", "key": "k"},
    {"op": "range", "key": ""},
    {**range_op(), "limit": 0},
    {**range_op(), "limit": 10**6},
    {**range_op(), "limit": True},
    {**range_op(), "end": None},
    {**range_op(), "prefix": 3},
    txn([], [{"op": "put", "key": "k", "value": 1}]),
    txn([], [{"op": "append", "key": "k", "value": "v"}]),
    txn([], [{"op": "txn", "key": "k"}]),
    txn([], ["put"]),
    txn([{"key": "k", "target": "version", "op": "=", "operand": "1"}], []),
    txn([{"key": "k", "target": "value", "op": "=", "operand": 1}], []),
    txn([{"key": "k", "target": "version", "op": "<=", "operand": 1}], []),
    txn([{"key": "k", "target": "lease", "op": "=", "operand": 1}], []),
    txn([{"key": 1, "target": "version", "op": "=", "operand": 1}], []),
    txn([7], []),
    {"op": "txn", "key": "", "compare": {}, "success": [], "failure": []},
    {"op": "txn", "key": "", "compare": []},
    # A txn whose first op is fine and whose last is not: nothing of it may run.
    txn([], [put("k", "v", 0), {"op": "put", "key": "k", "value": None}]),
]


@pytest.mark.parametrize("op", HOSTILE_OPS, ids=lambda op: json.dumps(op)[:60])
def test_a_malformed_op_answers_bad_op_and_changes_nothing(op: Any) -> None:
    m = KVMachine()
    m.apply(put("k", "v", 0), 1)
    before = m.snapshot()
    assert m.apply(op, 2).err == "BadOp"
    assert m.snapshot() == before


def test_snapshots_keep_the_indexes_and_the_format_before_them_restores_with_zeros() -> None:
    m = KVMachine()
    m.apply(put("a", "1", 0), 3)
    m.apply(put("a", "2", 1), 4)
    m.apply(range_op(), 5)  # builds the sorted keys, which a restore must not keep stale
    restored = KVMachine()
    restored.restore(m.snapshot())
    reply = restored.apply(get("a"), 6)
    assert (reply.value, reply.version, reply.mod_index, reply.create_index) == ("2", 2, 4, 3)
    restored.apply(put("b", "", 0), 7)
    assert [item.key for item in restored.apply(range_op(), 8).items] == ["a", "b"]

    old = json.dumps({"kv": {"a": ["x", 3]}, "sessions": {"1-n": [2, "OK"]}, "opened": 1})
    KVMachine.check_snapshot(old.encode())
    restored.restore(old.encode())
    reply = restored.apply(get("a"), 9)
    assert (reply.value, reply.version, reply.mod_index, reply.create_index) == ("x", 3, 0, 0)
    assert restored.sessions == {"1-n": (2, "OK")}
    assert [item.key for item in restored.apply(range_op(), 10).items] == ["a"]
    # No tombstones then: any key may have been deleted up to the snapshot's last change.
    old = json.dumps({"kv": {}, "sessions": {}, "opened": 0, "changed_at": 7})
    restored.restore(old.encode())
    assert restored.kv.forgotten_through == 7


def test_a_large_snapshot_is_encoded_in_pieces_that_restore_the_same_state() -> None:
    """A worker thread serializing a snapshot hands the GIL back to the event loop between
    pieces, so no piece may hold much of the state: about 1 MiB of keys and values (or one
    larger value). Whatever the characters (non-ASCII, a lone surrogate, which orjson
    refuses), the pieces joined restore the same state."""
    m = KVMachine()
    big = "v" * 300_000
    odd = {"é-ü-\U0001f600": "\u2603", "lone-\ud800": "x\udfff", "": "empty key"}
    for index, (key, value) in enumerate([*odd.items(), *((f"k{i}", big) for i in range(40))]):
        m.apply(put(key, value, 0), index + 1)
    granted = m.apply({"op": "lease_grant", "key": "", "ttl": 5}, 100)
    m.apply({**put("leased", "y", 0), "lease": granted.lease}, 101)

    pieces = list(m.snapshot_pieces())
    assert len(pieces) > 10 and max(map(len, pieces)) < (1 << 20) + 2 * len(big)
    assert b"".join(pieces) == m.snapshot()
    restored = KVMachine()
    restored.restore(m.snapshot())
    assert restored.kv.items() == m.kv.items() and restored.snapshot() == m.snapshot()
    assert restored.apply(get("lone-\ud800"), 102).value == "x\udfff"
    assert restored.leases.to_wire() == m.leases.to_wire()


@pytest.mark.parametrize(
    "data",
    [
        {"format": 3, "kv": {}, "sessions": {}, "opened": 0},  # from a newer trioraft
        {"format": 2, "kv": {"a": ["x", 1]}, "sessions": {}, "opened": 0},  # no indexes
        {"kv": {"a": ["x", 1, 2, 3]}, "sessions": {}, "opened": 0},  # indexes, no format
        {"format": 2, "kv": {"a": ["x", 1, "2", 3]}, "sessions": {}, "opened": 0},
        {"format": 2, "kv": {"a": ["x", 0, 2, 3]}, "sessions": {}, "opened": 0},
        {"format": 2, "kv": {"a": "x123"}, "sessions": {}, "opened": 0},
        {"format": 2, "kv": {}, "sessions": {}, "opened": 0, "tombstones": {"a": -1}},
        {"format": 2, "kv": {}, "sessions": {}, "opened": 0, "tombstones": ["a"]},
        {"format": 2, "kv": {}, "sessions": {}, "opened": 0, "forgotten_through": "1"},
    ],
)
def test_a_snapshot_of_no_known_format_is_refused(data: dict) -> None:
    with pytest.raises(ValueError, match="not a KV snapshot"):
        KVMachine.check_snapshot(json.dumps(data).encode())


def test_revoking_a_lease_of_many_keys_keeps_ranges_right() -> None:
    """A lease's keys deleted at once, then keys created (past a thousand of either, the
    keys' sorted order is rebuilt by the next range rather than kept up key by key): ranges
    agree with the keys there are."""
    m = KVMachine()
    lease = m.apply({"op": "lease_grant", "key": "", "ttl": 5}, 1).lease
    for i in range(1500):
        m.apply({**put(f"m/{i:05d}", "v", 0), "lease": lease}, 2)
    for key in ("a", "m/", "m/99999", "z"):
        m.apply(put(key, "stays", 0), 3)
    assert len(m.apply(range_op(limit=10_000), 4).items) == 1504  # the sorted order is built
    m.apply({"op": "lease_revoke", "key": "", "lease": lease}, 5)
    assert [item.key for item in m.apply(range_op(), 6).items] == ["a", "m/", "m/99999", "z"]
    m.apply(put("m/00007", "back", 0), 7)
    assert [item.key for item in m.apply(range_op(prefix="m/"), 8).items] == [
        "m/",
        "m/00007",
        "m/99999",
    ]
    for i in range(1200):  # as many created: the order is dropped and built again
        m.apply(put(f"b/{i:05d}", "new", 0), 9)
    keys = [item.key for item in m.apply(range_op(limit=10_000), 10).items]
    assert keys == sorted(keys) and len(keys) == 1205 and keys[:2] == ["a", "b/00000"]


def test_a_snapshot_leaves_the_live_strings_as_they_were() -> None:
    """orjson keeps a non-ASCII string's UTF-8 form inside the string, for good, and a
    snapshot's strings are the live machine's: a snapshot must not grow them."""
    m = KVMachine()
    m.apply(put("k-é", "välue-\U0001f600" * 100, 0), 1)
    m.apply(put("plain", "ascii", 0), 2)
    key, value = next(iter(m.kv.items().items()))
    before = (sys.getsizeof(key), sys.getsizeof(value[0]))
    m.copy().snapshot()
    assert (sys.getsizeof(key), sys.getsizeof(value[0])) == before


def test_ranges_stay_right_through_churn_spread_out_and_in_one_entry() -> None:
    """Once a range has ordered the keys, creates and deletes keep that order up, one at a
    time over many entries or a thousand in one."""
    m = KVMachine()
    m.apply(put("a", "v", 0), 1)
    m.apply(range_op(), 2)
    for i in range(1500):
        m.apply(put(f"k{i:05d}", "v", 0), 3 + i)
    for i in range(0, 1500, 3):
        m.apply(delete(f"k{i:05d}", 1), 2000 + i)
    for i in range(1001):
        m.apply(put(f"j{i:05d}", "v", 0), 5000)
    keys = [item.key for item in m.apply(range_op(limit=10_000), 5001).items]
    assert keys == sorted(m.kv.items()) and len(keys) == 2002


def test_a_restored_integer_orjson_cannot_hold_snapshots_again() -> None:
    """A snapshot may hold an integer past 64 bits (the reader takes it): the next snapshot
    of that state is still made (orjson refuses such integers; the standard library not)."""
    big = {"format": 2, "kv": {"a": ["x", 2**70, 1, 1]}, "sessions": {}, "opened": 0}
    m = KVMachine()
    m.restore(json.dumps(big).encode())
    again = KVMachine()
    again.restore(m.snapshot())
    assert again.apply(get("a"), 1).version == 2**70
