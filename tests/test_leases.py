"""The lease table (replicated) and the leader's lease clock, both pure."""

from __future__ import annotations

import pytest

from trioraft.kv.leases import LeaseClock, LeaseTable


def test_grant_attach_revoke_returns_the_keys_sorted():
    table = LeaseTable()
    first, second = table.grant(5), table.grant(7)
    assert (first, second) == (1, 2)
    table.attach("b", first)
    table.attach("a", first)
    table.attach("c", second)
    assert table.revoke(first) == ["a", "b"]
    assert table.owner == {"c": second}
    assert table.revoke(first) == []  # already gone


def test_a_key_belongs_to_one_lease_and_moves_when_attached_elsewhere():
    table = LeaseTable()
    first, second = table.grant(5), table.grant(5)
    table.attach("k", first)
    table.attach("k", second)
    assert table.revoke(first) == []
    table.detach("k")
    assert table.revoke(second) == []


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
        {"granted": 1, "leases": {"2": [5, []]}},
        {"granted": 2, "leases": {"1": [5, ["k"]], "2": [5, ["k"]]}},
        {"granted": 2, "leases": {"1": ["5", []]}},
        {"granted": 2, "leases": {"x": [5, []]}},
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


def test_a_new_leader_restarts_every_lease_at_its_full_ttl():
    clock = LeaseClock()
    clock.renew(1, 10, now=0.0)
    clock.restart_all({1: 10}, now=50.0)
    assert clock.expired(59.0) == []
    assert clock.expired(60.0) == [1]
