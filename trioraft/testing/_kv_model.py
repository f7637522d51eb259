"""trioraft's KV with every op a client has: the model :data:`KV_OPS_MODEL`.

Ops are :class:`~trioraft.testing.KVInput` and outputs :class:`~trioraft.testing.KVOutput`,
checked with :func:`~trioraft.testing.check_operations` (or :func:`check_kv_ops`). The state
is the whole store: a tuple of ``(key, value, version)``, one per key present, in key order
(``()`` initially); an absent key has value ``""`` and version 0. The rules follow
``trioraft/kv/machine.py``:

- get: legal iff it answered the key's value and version (``OK``, or ``NoKey`` if absent).
- put at ``version``: applies iff ``version`` is the key's (0: absent), then answers ``OK``
  and the key is at ``version + 1``; otherwise ``NoKey`` if absent, ``Version`` if not.
- delete at ``version``: applies iff the key exists at ``version``, then ``OK`` and the key
  is absent (created again, it starts over at version 1); otherwise as a put.
- a put or delete whose output is unknown applies exactly when its condition holds at its
  linearization point. One that answered ``Maybe`` (a retry met ``Version`` or ``NoKey``)
  may not have applied even where its condition held throughout (its retry is refused when
  the key was deleted after the index its client had seen before the first attempt):
  record it with ``output=None`` and ``optional=True``, as a txn's ``Maybe`` below (an
  output ``Maybe`` is read as "applies exactly when its condition holds").
- append: adds its value to the end and increments the version; legal iff it answered
  ``OK`` (or its output is unknown: it applied). An append that may or may not have applied
  is recorded with ``output=None`` and ``optional=True`` when it answered
  ``SessionExpired`` (the checker lets it take effect before its return, or never), or as
  never returned (``ret=None``) when cancelled: ``step`` returns one state, so "maybe" is
  the checker's business, not the model's (an append recorded as answering
  ``SessionExpired`` is illegal).
- range (``KVInput.range``): legal iff ``items``, ``more`` and ``next`` are what the store
  answers as of one point (the page: ``limit`` and ``MAX_RANGE_CHARS`` as the machine cuts
  it). Its log index is not checked.
- txn (``KVInput.txn``): the compares hold or not in the state it is linearized in; the
  branch they choose runs whole at that point (branch puts need no version: the key's next;
  a branch delete of an absent key answers ``NoKey``); legal iff ``succeeded`` and every
  result ``(err, value, version)`` match. A txn whose outcome is unknown runs the branch
  its compares choose at its linearization point; its failure branch must not write (a
  retry that fails its compares may have run nothing: ``ValueError`` otherwise). A txn
  that answered ``Maybe`` may not have applied even where its compares held throughout
  (its retry answers "failed" when a key it writes was deleted since its first attempt,
  whatever its compares): it must be recorded with ``output=None`` and ``optional=True``
  (``ValueError`` for an output ``Maybe``).
- compares: on ``value`` and ``version``, any operator. ``mod_index`` and ``create_index``
  are log indexes the model cannot know: only compares with 0 are allowed (every change
  has an index >= 1, so an index is 0 exactly when the key is absent: ``create_index = 0``
  means "absent"); any other operand is a ``ValueError``. (Keys restored from a snapshot
  of the format before indexes have 0s: do not check such a store with this model.)

Read-only ops (gets, ranges, puts and deletes that answered ``NoKey``/``Version``, txns
whose branch that ran only reads) are linearized as soon as legal (:class:`Model`). No op
is declared inert: a put of unknown outcome at a version the key has passed may still apply
after a delete, when the key climbs back to that version.

Partitioning: keys are independent, but ranges and txns touch several. The history is split
into the connected components of "touched the same key" (:func:`partition_by_keys`): a txn
touches its compared and branch keys, a range every key of the history within its bounds
(keys never named by any op are never present). A range that covers no key is a part of its
own. With no ranges or txns, that is one part per key.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..kv.messages import MAX_RANGE_CHARS, Compare, RangeArgs, TxnOp
from ._linearizability import Model, Operation, Result, check_operations
from ._models import MAYBE, NO_KEY, OK, VERSION, KVInput, KVOperation, KVOutput, Txn

#: The whole store: ``(key, value, version)`` per key present, in key order.
Store = tuple[tuple[str, str, int], ...]

_WRITES = ("put", "delete")


def _lookup(state: Store, key: str) -> tuple[str, int]:
    for k, value, version in state:
        if k == key:
            return value, version
    return "", 0


def _with(state: Store, key: str, value: str, version: int) -> Store:
    """The store with ``key`` set (``version`` 0: removed)."""
    items = [item for item in state if item[0] != key]
    if version:
        items.append((key, value, version))
        items.sort()
    return tuple(items)


def _conditional(
    state: Store, after: Store, applies: bool, exists: bool, out: KVOutput | None
) -> tuple[bool, Store]:
    if out is None or out.err == MAYBE:
        return True, after if applies else state
    if applies:
        return out.err == OK, after
    return out.err == (VERSION if exists else NO_KEY), state


def range_page(state: Store, query: RangeArgs) -> tuple[Store, bool, str]:
    """What ``range`` answers in ``state``: items, ``more`` and ``next`` (as the machine)."""
    low = max(query.start, query.prefix)
    items: list[tuple[str, str, int]] = []
    chars = 0
    for key, value, version in state:
        if key < low:
            continue
        if (query.end and key >= query.end) or not key.startswith(query.prefix):
            break
        chars += len(key) + len(value)
        if len(items) == query.limit or (items and chars > MAX_RANGE_CHARS):
            return tuple(items), True, key
        items.append((key, value, version))
    return tuple(items), False, ""


def _compare_holds(data: dict[str, tuple[str, int]], compare: Compare) -> bool:
    target, operand = compare.target()
    value, version = data.get(compare.key, ("", 0))
    actual: str | int
    if target == "value":
        actual = value
    elif target == "version":
        actual = version
    else:
        if operand != 0:
            raise ValueError(
                f"{compare}: the model knows no log indexes; compare {target} only with 0"
            )
        actual = 1 if version else 0  # any index >= 1 compares with 0 alike
    if compare.op == "=":
        return actual == operand
    if compare.op == "!=":
        return actual != operand
    if compare.op == "<":
        return actual < operand  # type: ignore[operator]
    return actual > operand  # type: ignore[operator]


def _run_branch(
    data: dict[str, tuple[str, int]], branch: tuple[TxnOp, ...]
) -> tuple[tuple[str, str, int], ...]:
    results = []
    for op in branch:
        value, version = data.get(op.key, ("", 0))
        if op.op == "get":
            results.append((OK if version else NO_KEY, value, version))
        elif op.op == "put":
            data[op.key] = (op.value, version + 1)
            results.append((OK, "", version + 1))
        elif version:
            del data[op.key]
            results.append((OK, "", 0))
        else:
            results.append((NO_KEY, "", 0))
    return tuple(results)


def _txn_step(state: Store, txn: Txn, out: KVOutput | None) -> tuple[bool, Store]:
    data = {key: (value, version) for key, value, version in state}
    holds = all(_compare_holds(data, compare) for compare in txn.compare)
    if out is not None and out.err == MAYBE:
        raise ValueError(
            "a txn that answered Maybe may or may not have applied: record it as optional"
        )
    if out is None and any(op.op in _WRITES for op in txn.failure):
        raise ValueError("a txn of unknown outcome whose failure branch writes: not modelled")
    if out is not None and (out.err != OK or out.succeeded != holds):
        return False, state
    results = _run_branch(data, txn.success if holds else txn.failure)
    if out is not None and results != out.results:
        return False, state
    return True, tuple(sorted((key, value, version) for key, (value, version) in data.items()))


def _step(state: Store, op: KVInput, out: KVOutput | None) -> tuple[bool, Store]:
    kind = op.op
    if kind == "range":
        assert op.range is not None, "a range names its keys"
        if out is None:
            return True, state
        return range_page(state, op.range) == (out.items, out.more, out.next), state
    if kind == "txn":
        assert op.txn is not None, "a txn carries its request"
        return _txn_step(state, op.txn, out)
    value, version = _lookup(state, op.key)
    if kind == "get":
        expected = (value, version, OK if version else NO_KEY)
        return (out is None or (out.value, out.version, out.err) == expected), state
    if kind == "put":
        applies = op.version == version
        after = _with(state, op.key, op.value, version + 1) if applies else state
        return _conditional(state, after, applies, version > 0, out)
    if kind == "delete":
        applies = version > 0 and op.version == version
        after = _with(state, op.key, "", 0) if applies else state
        return _conditional(state, after, applies, version > 0, out)
    if kind == "append":
        return (out is None or out.err == OK), _with(state, op.key, value + op.value, version + 1)
    raise ValueError(f"unknown op {kind!r}")


def _read_only(op: KVInput, out: KVOutput | None) -> bool:
    """Gets, ranges, puts and deletes that did not apply, txns whose branch only read."""
    if op.op in ("get", "range"):
        return True
    if op.op in _WRITES:
        return out is not None and out.err in (NO_KEY, VERSION)
    if op.op == "txn" and op.txn is not None and out is not None and out.err == OK:
        branch = op.txn.success if out.succeeded else op.txn.failure
        return not any(branch_op.op in _WRITES for branch_op in branch)
    return False


def touched_keys(op: KVInput, every_key: Iterable[str] = ()) -> set[str]:
    """The keys ``op`` reads or writes; a range's are those of ``every_key`` it covers."""
    if op.op == "txn" and op.txn is not None:
        txn = op.txn
        return {item.key for item in (*txn.compare, *txn.success, *txn.failure)}
    if op.op == "range" and op.range is not None:
        query, low = op.range, max(op.range.start, op.range.prefix)
        return {
            key
            for key in every_key
            if low <= key and (not query.end or key < query.end) and key.startswith(query.prefix)
        }
    return {op.key}


def partition_by_keys(ops: list[KVOperation]) -> list[list[KVOperation]]:
    """The connected components of "touched a key in common", each in the order given;
    parts in the order of their least key (a range that touches none: after them all)."""
    every_key = set()
    for op in ops:
        if op.input.op != "range":
            every_key |= touched_keys(op.input)
    parent = {key: key for key in every_key}

    def root(key: str) -> str:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    touched = [touched_keys(op.input, every_key) for op in ops]
    for keys in touched:
        first, *rest = sorted(keys) or [None]
        for key in rest:
            parent[root(key)] = root(first)  # type: ignore[arg-type]
    parts: dict[str, list[KVOperation]] = {}
    alone: list[list[KVOperation]] = []
    for op, keys in zip(ops, touched, strict=True):
        if keys:
            parts.setdefault(root(min(keys)), []).append(op)
        else:
            alone.append([op])
    least = {r: min(k for k in every_key if root(k) == r) for r in parts}
    return [parts[r] for r in sorted(parts, key=least.__getitem__)] + alone


def _describe(op: KVInput, out: KVOutput | None) -> str:
    err = "?" if out is None else out.err
    if op.op == "get":
        got = "?" if out is None else f"({out.value!r}, {out.version}, {out.err})"
        return f"get({op.key!r}) -> {got}"
    if op.op == "put":
        return f"put({op.key!r}, {op.value!r}, {op.version}) -> {err}"
    if op.op == "delete":
        return f"delete({op.key!r}, {op.version}) -> {err}"
    if op.op == "append":
        return f"append({op.key!r}, {op.value!r}) -> {err}"
    if op.op == "range" and op.range is not None:
        q = op.range
        what = f"range(prefix={q.prefix!r}, start={q.start!r}, end={q.end!r}, limit={q.limit})"
        if out is None:
            return f"{what} -> ?"
        more = f", more, next={out.next!r}" if out.more else ""
        return f"{what} -> {[(k, v, n) for k, v, n in out.items]}{more}"
    if op.op == "txn" and op.txn is not None:
        t = op.txn
        compares = ", ".join(f"{c.key} {c.op} {c.target()}" for c in t.compare)
        what = f"txn([{compares}], [{_branch_text(t.success)}], [{_branch_text(t.failure)}])"
        if out is None or out.err != OK:
            return f"{what} -> {err}"
        return f"{what} -> {'succeeded' if out.succeeded else 'failed'} {list(out.results)}"
    return f"{op!r} -> {out!r}"


def _branch_text(branch: tuple[TxnOp, ...]) -> str:
    return "; ".join(f"put {o.key} {o.value!r}" if o.op == "put" else f"{o.op} {o.key}"
                     for o in branch)  # fmt: skip


def _describe_store(state: Store) -> str:
    return "{" + ", ".join(f"{k!r}: ({v!r}, {n})" for k, v, n in state) + "}"


KV_OPS_MODEL: Model[Store, KVInput, KVOutput] = Model(
    init=(),
    step=_step,
    partition=partition_by_keys,
    read_only=_read_only,
    describe_operation=_describe,
    describe_state=_describe_store,
)


def check_kv_ops(
    operations: Iterable[Operation[KVInput, KVOutput]], *, timeout: float | None = 60.0
) -> Result[Store, KVInput, KVOutput]:
    """Check a history of trioraft's KV with every op (:data:`KV_OPS_MODEL`)."""
    return check_operations(KV_OPS_MODEL, list(operations), timeout)
