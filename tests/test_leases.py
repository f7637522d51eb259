"""The lease table (replicated) and the leader's lease clock, both pure."""

from __future__ import annotations

import json

import pytest

from trioraft.kv.leases import LeaseClock, LeaseTable
from trioraft.kv.machine import KVMachine


def test_grant_attach_revoke_returns_the_keys_sorted():
    table = LeaseTable()
    first, second = table.grant(5), table.grant(7)
    assert (first, second) == (1, 2)
    table.attach("b", first)
    table.attach("a", first)
    table.attach("c", second)
    gone = table.revoke(first)
    assert gone is not None and gone.keys == {"a", "b"}
    assert table.owner == {"c": second}
    assert table.revoke(first) is None  # already gone


def test_a_key_belongs_to_one_lease_and_moves_when_attached_elsewhere():
    table = LeaseTable()
    first, second = table.grant(5), table.grant(5)
    table.attach("k", first)
    table.attach("k", second)
    assert table.revoke(first).keys == set()
    table.detach("k")
    assert table.revoke(second).keys == set()


def test_a_full_table_refuses_a_grant():
    table = LeaseTable(max_leases=1)
    assert table.grant(5) == 1
    assert table.grant(5) is None
    table.revoke(1)
    assert table.grant(5) == 2  # ids are never reused


def test_the_wire_form_round_trips_and_bad_ones_are_refused():
    table = LeaseTable()
    table.attach("k", table.grant(5))
    table.grant(9)
    copy = LeaseTable()
    copy.replace_from_wire(table.to_wire())
    assert copy.to_wire() == table.to_wire()
    assert copy.owner == {"k": 1}
    for bad in (
        None,
        {"granted": 2},
        {"granted": "2", "leases": {}},
        {"granted": 1, "leases": {"2": [5, [], []]}},
        {"granted": 2, "leases": {"1": [5, ["k"], []], "2": [5, ["k"], []]}},
        {"granted": 2, "leases": {"1": ["5", [], []]}},
        {"granted": 2, "leases": {"1": [5, [], [7]]}},
        {"granted": 2, "leases": {"1": [5, []]}},
        {"granted": 2, "leases": {"x": [5, [], []]}},
    ):
        with pytest.raises(ValueError):
            LeaseTable().replace_from_wire(bad)


def test_the_clock_expires_by_deadline_then_id_and_renewal_pushes_back():
    clock = LeaseClock()
    clock.restart_all({2: 10, 1: 10, 3: 30}, now=100.0)
    assert clock.next_deadline() == 110.0
    assert clock.expired(109.9) == []
    clock.renew(2, 10, now=105.0)
    assert clock.expired(110.0) == [1]
    assert clock.expired(110.0) == [1]  # stays due until forgotten
    clock.forget(1)
    assert clock.next_deadline() == 115.0
    assert clock.expired(200.0) == [2, 3]


def test_keepalives_behind_an_earlier_deadline_do_not_grow_the_clock():
    """Each keepalive leaves its old deadline in the heap; with another lease's earlier
    deadline at its head nothing popped them: 100,000 keepalives kept 100,000 pairs."""
    clock = LeaseClock()
    clock.renew(1, 10, now=0.0)
    for k in range(100_000):
        clock.renew(2, 1000, now=k / 1000)
    assert len(clock._heap) <= 2 * len(clock.deadlines) + 64
    assert clock.next_deadline() == 10.0
    assert clock.expired(10.0) == [1]
    clock.forget(1)
    assert clock.next_deadline() == 1000 + 99_999 / 1000
    assert clock.expired(2000.0) == [2]


def test_a_new_leader_restarts_every_lease_at_its_full_ttl():
    clock = LeaseClock()
    clock.renew(1, 10, now=0.0)
    clock.restart_all({1: 10}, now=50.0)
    assert clock.expired(59.0) == []
    assert clock.expired(60.0) == [1]


# The replicated machine's lease ops, and the changes it records for watches.


def test_machine_keys_under_a_lease_go_with_it_and_watchers_see_the_deletes():
    m = KVMachine()
    grant = m.apply({"op": "lease_grant", "key": "", "ttl": 5}, 1)
    assert (grant.err, grant.lease, grant.ttl) == ("OK", 1, 5)
    assert m.apply({"op": "put", "key": "a", "value": "1", "version": 0, "lease": 1}, 2).err == "OK"
    assert m.apply({"op": "put", "key": "b", "value": "1", "version": 0, "lease": 1}, 2).err == "OK"
    # Written again without the lease: no longer the lease's.
    assert m.apply({"op": "put", "key": "b", "value": "2", "version": 1}, 3).err == "OK"
    assert m.apply({"op": "put", "key": "c", "value": "", "version": 0, "lease": 9}, 4).err == (
        "NoLease"
    )
    assert m.apply({"op": "get", "key": "c"}, 4).err == "NoKey"
    assert m.apply({"op": "lease_ttl", "key": "", "lease": 1}, 5).ttl == 5
    assert m.apply({"op": "lease_revoke", "key": "", "lease": 1}, 6).err == "OK"
    assert m.apply({"op": "get", "key": "a"}, 7).err == "NoKey"
    assert m.apply({"op": "get", "key": "b"}, 7).value == "2"
    assert m.apply({"op": "lease_revoke", "key": "", "lease": 1}, 8).err == "NoLease"
    assert m.apply({"op": "lease_ttl", "key": "", "lease": 1}, 8).err == "NoLease"

    changes, through = m.history.since("", 0)
    assert [(c.index, c.key, c.kind) for c in changes] == [
        (2, "a", "put"),
        (2, "b", "put"),
        (3, "b", "put"),
        (6, "a", "delete"),
    ]
    assert through == 6


def txn(success: list[dict], failure: list[dict] | None = None) -> dict:
    return {"op": "txn", "key": "", "compare": [], "success": success, "failure": failure or []}


def test_machine_txn_puts_may_name_a_lease_and_a_keys_last_write_decides():
    m = KVMachine()
    m.apply({"op": "lease_grant", "key": "", "ttl": 5}, 1)
    reply = m.apply(txn([
        {"op": "put", "key": "a", "value": "1", "lease": 1},
        {"op": "put", "key": "b", "value": "1", "lease": 1},
        {"op": "put", "key": "b", "value": "2"},  # written again without it: not the lease's
        {"op": "put", "key": "c", "value": "1", "lease": 1},
        {"op": "delete", "key": "c"},  # gone: not the lease's either
    ]), 2)  # fmt: skip
    assert (reply.err, reply.succeeded) == ("OK", True)
    assert m.leases.owner == {"a": 1}
    KVMachine().restore(m.snapshot())  # no lease holds a key that does not exist
    # A lease that does not exist, in either branch: nothing applies.
    missing = txn([{"op": "put", "key": "d", "value": ""}],
                  [{"op": "put", "key": "e", "value": "", "lease": 9}])  # fmt: skip
    assert m.apply(missing, 3).err == "NoLease"
    assert m.apply({"op": "get", "key": "d"}, 4).err == "NoKey"
    m.apply({"op": "lease_revoke", "key": "", "lease": 1}, 5)
    assert m.apply({"op": "get", "key": "a"}, 6).err == "NoKey"
    assert m.apply({"op": "get", "key": "b"}, 6).value == "2"


def test_machine_snapshots_keep_the_leases_and_a_restore_starts_the_history_over():
    m = KVMachine()
    m.apply({"op": "lease_grant", "key": "", "ttl": 5}, 1)
    m.apply({"op": "put", "key": "a", "value": "1", "version": 0, "lease": 1}, 2)
    m.apply({"op": "get", "key": "a"}, 3)
    restored = KVMachine()
    restored.history.record(1, [])
    restored.restore(m.snapshot())
    assert restored.history.compacted_through == 2  # the last change, not the last op
    assert restored.apply({"op": "lease_revoke", "key": "", "lease": 1}, 4).err == "OK"
    assert restored.apply({"op": "get", "key": "a"}, 5).err == "NoKey"
    assert [c.kind for c in restored.history.since("", 2)[0]] == ["delete"]


@pytest.mark.parametrize(
    "op",
    [
        {"op": "lease_grant", "key": "", "ttl": 0},
        {"op": "lease_grant", "key": "", "ttl": "5"},
        {"op": "lease_grant", "key": "", "ttl": 10**9},
        {"op": "lease_revoke", "key": "", "lease": None},
        {"op": "put", "key": "k", "value": "", "version": 0, "lease": -1},
        {"op": "put", "key": "k", "value": "", "version": 0, "lease": True},
        txn([{"op": "delete", "key": "k", "lease": 1}]),
        txn([{"op": "put", "key": "k", "value": "", "lease": -1}]),
        txn([], [{"op": "put", "key": "k", "value": "", "lease": "1"}]),
    ],
)
def test_machine_malformed_lease_ops_answer_bad_op_and_change_nothing(op):
    m = KVMachine()
    m.apply({"op": "lease_grant", "key": "", "ttl": 5}, 1)
    before = m.snapshot()
    assert m.apply(op, 2).err == "BadOp"
    assert m.snapshot() == before


def test_machine_sessions_opened_under_a_lease_end_with_it():
    m = KVMachine()
    m.apply({"op": "lease_grant", "key": "", "ttl": 5}, 1)
    session = m.apply({"op": "open", "key": "", "nonce": "n", "lease": 1}, 2).session
    plain = m.apply({"op": "open", "key": "", "nonce": "m"}, 3).session
    append = {"op": "append", "key": "k", "value": "x", "seq": 1}
    assert m.apply({**append, "session": session}, 4).err == "OK"
    assert m.apply({"op": "open", "key": "", "nonce": "o", "lease": 7}, 5).err == "NoLease"
    m.apply({"op": "lease_revoke", "key": "", "lease": 1}, 6)
    assert m.apply({**append, "session": session, "seq": 2}, 7).err == "SessionExpired"
    assert m.apply({**append, "session": plain}, 8).err == "OK"
    assert session not in m.sessions


def test_machine_a_forgotten_session_leaves_its_lease_too():
    """Past ``max_sessions`` the least recently used session is forgotten, and its lease
    forgets it too: 1,000 sessions opened under one lease kept 1,000 names in it (and in
    every snapshot) while the machine remembered 10. A snapshot that still names forgotten
    sessions restores without them."""
    m = KVMachine(max_sessions=10)
    m.apply({"op": "lease_grant", "key": "", "ttl": 5}, 1)
    for k in range(1000):
        m.apply({"op": "open", "key": "", "nonce": f"n{k}", "lease": 1}, 2 + k)
    assert len(m.sessions) == 10
    assert m.leases.leases[1].sessions == set(m.sessions)
    state = json.loads(m.snapshot())
    state["leases"]["leases"]["1"][2].append("1-n0")  # as written before this fix
    restored = KVMachine(max_sessions=10)
    restored.restore(json.dumps(state).encode())
    assert restored.leases.leases[1].sessions == set(m.sessions)
    restored.apply({"op": "lease_revoke", "key": "", "lease": 1}, 2000)
    assert restored.sessions == {} and restored.leases.session_owner == {}
