"""Built-in models for :func:`~trioraft.testing.check_operations`.

:data:`VERSIONED_KV_MODEL` is trioraft's KV (``trioraft/kv/machine.py``), one state
``(value, version)`` per key, initially ``("", 0)``; ops are :class:`KVInput` and their
outputs :class:`KVOutput`:

- get: legal iff it returned exactly the state's value and version (its ``err`` is not
  checked: it follows from the version).
- put: if its version equals the state's, legal iff it answered ``OK`` (the state becomes
  ``(value, version + 1)``); otherwise legal iff it answered ``NoKey`` when the state's
  version is 0 and ``Version`` when it is not (the state is unchanged). Any other answer is
  illegal.
- a put that answered ``Maybe``, or whose output is unknown (``None``), is legal either way:
  it applies exactly when its version matches at its linearization point.
- append: adds its value to the end and increments the version (an absent key acts like a
  put at version 0); legal iff it answered ``OK`` or its output is unknown.
- an op of unknown outcome that may or may not have taken effect (a cancelled call, an
  append answered ``SessionExpired``) is recorded as never returned (``ret=None``): the
  checker then lets it take effect at any time after its call, or never.

:data:`KV_MODEL` is the plain get/put/append KV (no versions): one string per key, ``""``
initially; a get must return the current value, puts and appends are always legal.

:func:`register_model` is one register with read, write and compare-and-set
(:class:`RegisterInput`); a read's output is the value read, a cas's whether it swapped.

Every state is an immutable, hashable value; keys are independent, so the KV models
partition a history per key (in sorted key order).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from ..kv.messages import Compare, RangeArgs, TxnOp
from ._linearizability import Model, Operation, Result, check_operations

OK, NO_KEY, VERSION, MAYBE = "OK", "NoKey", "Version", "Maybe"


@dataclass(frozen=True, slots=True)
class KVInput:
    """A KV call: ``op`` is ``"get"``, ``"put"`` or ``"append"``; ``version`` is a put's.

    :data:`~trioraft.testing.KV_OPS_MODEL` also takes ``"delete"`` (at ``version``),
    ``"range"`` (``range`` says which keys; ``key`` is unused) and ``"txn"`` (``txn``)."""

    op: str
    key: str
    value: str = ""
    version: int = 0
    range: RangeArgs | None = None
    txn: Txn | None = None


@dataclass(frozen=True, slots=True)
class Txn:
    """A transaction's request, as tuples (so that an input stays hashable)."""

    compare: tuple[Compare, ...] = ()
    success: tuple[TxnOp, ...] = ()
    failure: tuple[TxnOp, ...] = ()


@dataclass(frozen=True, slots=True)
class KVOutput:
    """What a KV call answered: a get's value and version, and the outcome (``err``).

    A range's answer is ``items`` (``(key, value, version)`` in key order), ``more`` and
    ``next``; a txn's is ``succeeded`` and ``results``, one ``(err, value, version)`` per op
    of the branch that ran (a put's is its new version, a delete's only ``err``). Log
    indexes are not recorded: no model can know them."""

    value: str = ""
    version: int = 0
    err: str = OK
    items: tuple[tuple[str, str, int], ...] = ()
    more: bool = False
    next: str = ""
    succeeded: bool = False
    results: tuple[tuple[str, str, int], ...] = ()


KVOperation = Operation[KVInput, KVOutput]
VersionedState = tuple[str, int]


def partition_by_key(ops: list[KVOperation]) -> list[list[KVOperation]]:
    """One list per key, keys in sorted order, each key's ops in the order given."""
    by_key: dict[str, list[KVOperation]] = defaultdict(list)
    for op in ops:
        by_key[op.input.key].append(op)
    return [by_key[key] for key in sorted(by_key)]


def _versioned_step(
    state: VersionedState, op: KVInput, out: KVOutput | None
) -> tuple[bool, VersionedState]:
    value, version = state
    if op.op == "get":
        return (out is None or (out.value == value and out.version == version)), state
    if op.op == "put":
        if out is None or out.err == MAYBE:
            return True, ((op.value, version + 1) if op.version == version else state)
        if op.version == version:
            return out.err == OK, (op.value, version + 1)
        return out.err == (NO_KEY if version == 0 else VERSION), state
    if op.op == "append":
        return (out is None or out.err == OK), (value + op.value, version + 1)
    return False, state


def _describe_kv(op: KVInput, out: KVOutput | None) -> str:
    if op.op == "get":
        got = "?" if out is None else f"({out.value!r}, {out.version}, {out.err})"
        return f"get({op.key!r}) -> {got}"
    answer = "?" if out is None else out.err
    if op.op == "put":
        return f"put({op.key!r}, {op.value!r}, {op.version}) -> {answer}"
    return f"{op.op}({op.key!r}, {op.value!r}) -> {answer}"


def _versioned_read_only(op: KVInput, out: KVOutput | None) -> bool:
    """A get, or a put that answered it did not apply (legal only where it changes nothing)."""
    if op.op == "get":
        return True
    return op.op == "put" and out is not None and out.err in (NO_KEY, VERSION)


def _versioned_inert(state: VersionedState, op: KVInput, out: KVOutput | None) -> bool:
    """A put of unknown outcome naming a version the key has passed: versions only grow,
    so it can never apply again."""
    return op.op == "put" and (out is None or out.err == MAYBE) and op.version < state[1]


VERSIONED_KV_MODEL: Model[VersionedState, KVInput, KVOutput] = Model(
    init=("", 0),
    step=_versioned_step,
    partition=partition_by_key,
    read_only=_versioned_read_only,
    inert=_versioned_inert,
    describe_operation=_describe_kv,
)


def _plain_step(state: str, op: KVInput, out: KVOutput | None) -> tuple[bool, str]:
    if op.op == "get":
        return (out is None or out.value == state), state
    if op.op == "put":
        return True, op.value
    if op.op == "append":
        return True, state + op.value
    return False, state


def _describe_plain(op: KVInput, out: KVOutput | None) -> str:
    if op.op == "get":
        return f"get({op.key!r}) -> {'?' if out is None else repr(out.value)}"
    return f"{op.op}({op.key!r}, {op.value!r})"


KV_MODEL: Model[str, KVInput, KVOutput] = Model(
    init="",
    step=_plain_step,
    partition=partition_by_key,
    read_only=lambda op, out: op.op == "get",
    describe_operation=_describe_plain,
)


@dataclass(frozen=True, slots=True)
class RegisterInput:
    """``op`` is ``"read"``, ``"write"`` (of ``value``) or ``"cas"`` (``expected`` ->
    ``value``). Outputs: a read's is the value read, a cas's whether it swapped; ``None``
    is always an unknown outcome (so ``None`` cannot be a register value)."""

    op: str
    value: Hashable = None
    expected: Hashable = None


def _register_step(state: Hashable, op: RegisterInput, out: Any) -> tuple[bool, Hashable]:
    if op.op == "read":
        return (out is None or out == state), state
    if op.op == "write":
        return True, op.value
    if op.op == "cas":
        swaps = state == op.expected
        if out is None:  # unknown: it swapped exactly if it found what it expected
            return True, (op.value if swaps else state)
        return out == swaps, (op.value if swaps else state)
    return False, state


def _register_read_only(op: RegisterInput, out: Any) -> bool:
    """A read, or a cas that answered it did not swap."""
    return op.op == "read" or (op.op == "cas" and out is False)


def _describe_register(op: RegisterInput, out: Any) -> str:
    answer = "?" if out is None else repr(out)
    if op.op == "read":
        return f"read() -> {answer}"
    if op.op == "write":
        return f"write({op.value!r})"
    return f"cas({op.expected!r}, {op.value!r}) -> {answer}"


def register_model(initial: Hashable = 0) -> Model[Hashable, RegisterInput, Any]:
    """One register holding ``initial`` at first (not ``None``: see :class:`RegisterInput`)."""
    if initial is None:
        raise ValueError("None means an unknown output: start the register at another value")
    return Model(
        init=initial,
        step=_register_step,
        read_only=_register_read_only,
        describe_operation=_describe_register,
    )


def check(
    operations: Iterable[KVOperation], *, timeout: float | None = 60.0
) -> Result[VersionedState, KVInput, KVOutput]:
    """Check a history of trioraft's versioned KV (:data:`VERSIONED_KV_MODEL`)."""
    return check_operations(VERSIONED_KV_MODEL, list(operations), timeout)
