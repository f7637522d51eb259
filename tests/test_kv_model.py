"""The versioned-KV-with-delete model (trioraft.testing._kv_model) and the per-key search of
tests/kvtest.py: legal histories pass, and each kind of illegal one is caught."""

from __future__ import annotations

import math
import time

import pytest

from tests.kvtest import KVCall, linearizable
from trioraft.testing._kv_model import INITIAL, step


def call(kind: str, value: str, version: int, err: str, at: float, ret: float = 0.0) -> KVCall:
    return KVCall("c", kind, "k", value, version, err, at, ret or at + 0.5)


def check(calls: list[KVCall]) -> bool | None:
    return linearizable(calls, time.monotonic() + 10)


def test_step_follows_the_rules_of_put_delete_and_append() -> None:
    assert step(INITIAL, "put", "a", 0, "OK") == [("a", 1)]
    assert step(INITIAL, "put", "a", 1, "NoKey") == [INITIAL]
    assert step(INITIAL, "put", "a", 1, "Version") == []
    assert step(("a", 1), "delete", "", 1, "OK") == [("", 0)]
    assert step(("a", 1), "delete", "", 2, "Version") == [("a", 1)]
    assert step(INITIAL, "delete", "", 0, "OK") == []  # nothing to delete
    assert step(INITIAL, "delete", "", 0, "NoKey") == [INITIAL]
    assert step(("a", 1), "delete", "", 1, "Maybe") == [("", 0)]
    assert step(("a", 2), "delete", "", 1, "Maybe") == [("a", 2)]
    assert step(("a", 1), "append", "b", 0, "OK") == [("ab", 2)]
    assert step(("a", 1), "append", "b", 0, "SessionExpired") == [("a", 1), ("ab", 2)]
    assert step(("a", 1), "get", "a", 1, "OK") == [("a", 1)]
    assert step(("a", 1), "get", "", 0, "NoKey") == []


def test_legal_histories_pass() -> None:
    assert check(
        [
            call("put", "a", 0, "OK", 0),
            call("delete", "", 1, "OK", 1),
            call("get", "", 0, "NoKey", 2),
            call("put", "b", 0, "OK", 3),
            call("get", "b", 1, "OK", 4),
        ]
    )
    # Concurrent: the get may go before or after the delete.
    assert check(
        [
            call("put", "a", 0, "OK", 0),
            call("delete", "", 1, "OK", 1, 3),
            call("get", "a", 1, "OK", 2, 2.5),
        ]
    )
    # A delete that never returned may or may not have applied.
    assert check(
        [
            call("put", "a", 0, "OK", 0),
            call("delete", "", 1, "", 1, math.inf),
            call("get", "a", 1, "OK", 2),
        ]
    )
    assert check([call("append", "x", 0, "SessionExpired", 0), call("get", "", 0, "OK", 1)])


@pytest.mark.parametrize(
    "calls",
    [
        # A get after a delete returned sees the deleted value.
        [
            call("put", "a", 0, "OK", 0),
            call("delete", "", 1, "OK", 1),
            call("get", "a", 1, "OK", 2),
        ],
        # A re-created key that does not start over at version 1.
        [
            call("put", "a", 0, "OK", 0),
            call("delete", "", 1, "OK", 1),
            call("get", "b", 2, "OK", 2),
        ],
        # Two deletes of the same version both OK.
        [
            call("put", "a", 0, "OK", 0),
            call("delete", "", 1, "OK", 1),
            call("delete", "", 1, "OK", 2),
        ],
        # An append applied twice.
        [call("append", "x", 0, "OK", 0), call("get", "xx", 2, "OK", 1)],
    ],
)
def test_illegal_histories_are_caught(calls: list[KVCall]) -> None:
    assert check(calls) is False
