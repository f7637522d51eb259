"""A linearizability checker for the versioned KV (Wing & Gong search with memoisation).

A history is a list of :class:`Operation` records with call and return times on one monotonic
clock. The checker splits it per key (keys are independent in the model), and for each key
searches for a total order that respects real time (an op that returned before another was
called comes first) and in which every op's output is what :func:`step` allows. The search
lifts ops out of a linked list of call/return events (Lowe's refinement of Wing & Gong) and
memoises ``(set of linearized ops, state)`` so no configuration is explored twice.

The model (state = ``(value, version)``, initially ``("", 0)``):
- get: legal iff it returned exactly the state's value and version.
- put: if its version equals the state's, legal iff it answered OK (state becomes
  ``(value, version + 1)``); otherwise legal iff it answered ``NoKey`` when the state's
  version is 0 and ``Version`` when it is not (state unchanged).
- a put that answered ``Maybe``, or never returned (``ret is None``), is legal either way:
  it applies exactly when its version matches at its linearization point.
- a get that never returned constrains nothing and is left out.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

OK, NO_KEY, VERSION, MAYBE = "OK", "NoKey", "Version", "Maybe"
State = tuple[str, int]
INITIAL: State = ("", 0)


@dataclass(frozen=True)
class Operation:
    """One client operation as observed by its caller.

    For a get, ``value``/``version`` are what it returned; for a put, what it sent.
    ``err`` is the outcome (``OK``, ``NoKey``, ``Version``, ``Maybe``); ``ret`` is ``None``
    for an operation that never returned (its outcome is unknown).
    """

    client: str
    kind: str  # "get" | "put"
    key: str
    value: str
    version: int
    err: str
    call: float
    ret: float | None

    def describe(self) -> str:
        end = "never returned" if self.ret is None else f"{self.ret:.6f}"
        if self.kind == "get":
            what = f"get({self.key!r}) -> ({self.value!r}, {self.version}, {self.err})"
        else:
            what = f"put({self.key!r}, {self.value!r}, {self.version}) -> {self.err or '?'}"
        return f"[{self.call:.6f} .. {end}] client {self.client}: {what}"


def step(state: State, op: Operation) -> tuple[bool, State]:
    """Is ``op`` legal in ``state``, and what state follows it?"""
    value, version = state
    if op.kind == "get":
        return (op.value == value and op.version == version), state
    if op.ret is None or op.err == MAYBE:
        return True, ((op.value, version + 1) if op.version == version else state)
    if op.version == version:
        return op.err == OK, (op.value, version + 1)
    return op.err == (NO_KEY if version == 0 else VERSION), state


@dataclass
class Result:
    """The verdict. ``ok`` is ``None`` when the search ran out of time (unknown)."""

    ok: bool | None
    failing_key: str | None = None
    account: str = ""
    keys_checked: int = 0

    def __bool__(self) -> bool:
        return self.ok is True


def check(history: Iterable[Operation], *, timeout: float = 60.0) -> Result:
    """Check a whole history; on failure, explain the smallest failing key's history."""
    per_key: dict[str, list[Operation]] = defaultdict(list)
    for op in history:
        if op.kind == "get" and op.ret is None:
            continue
        per_key[op.key].append(op)
    deadline = time.monotonic() + timeout
    failures: list[tuple[int, str, list[Operation], list[int]]] = []
    unknown = False
    for key in sorted(per_key):
        ops = per_key[key]
        verdict, best = _check_key(ops, deadline)
        if verdict is None:
            unknown = True
            break
        if not verdict:
            failures.append((len(ops), key, ops, best))
    if failures:
        _, key, ops, best = min(failures, key=lambda f: f[:2])
        return Result(False, key, _explain(key, ops, best), len(per_key))
    if unknown:
        return Result(None, account="the search timed out", keys_checked=len(per_key))
    return Result(True, keys_checked=len(per_key))


@dataclass(eq=False)
class _Event:
    op_index: int
    is_call: bool
    time: float
    prev: _Event | None = None
    next: _Event | None = None
    match: _Event | None = field(default=None, repr=False)


def _build_list(ops: list[Operation]) -> _Event:
    events: list[_Event] = []
    for i, op in enumerate(ops):
        call = _Event(i, True, op.call)
        ret = _Event(i, False, math.inf if op.ret is None else op.ret)
        call.match = ret
        events += [call, ret]
    # At equal times, calls sort before returns: touching intervals count as concurrent.
    events.sort(key=lambda e: (e.time, not e.is_call))
    head = _Event(-1, False, -math.inf)
    prev = head
    for e in events:
        prev.next, e.prev = e, prev
        prev = e
    return head


def _lift(call: _Event) -> None:
    assert call.prev is not None and call.match is not None and call.match.prev is not None
    call.prev.next = call.next
    if call.next is not None:
        call.next.prev = call.prev
    ret = call.match
    ret.prev.next = ret.next  # type: ignore[union-attr]
    if ret.next is not None:
        ret.next.prev = ret.prev


def _unlift(call: _Event) -> None:
    ret = call.match
    assert ret is not None and ret.prev is not None and call.prev is not None
    ret.prev.next = ret
    if ret.next is not None:
        ret.next.prev = ret
    call.prev.next = call
    if call.next is not None:
        call.next.prev = call


def _check_key(ops: list[Operation], deadline: float) -> tuple[bool | None, list[int]]:
    """Search one key's history: the verdict, and the longest linearization found (indexes)."""
    head = _build_list(ops)
    seen: set[tuple[int, State]] = set()
    stack: list[tuple[_Event, State]] = []
    linearized = 0
    state = INITIAL
    best: list[int] = []
    entry = head.next
    steps = 0
    while head.next is not None:
        steps += 1
        if steps % 4096 == 0 and time.monotonic() > deadline:
            return None, []
        assert entry is not None
        if entry.is_call:
            legal, new_state = step(state, ops[entry.op_index])
            if legal:
                new_linearized = linearized | (1 << entry.op_index)
                if (new_linearized, new_state) not in seen:
                    seen.add((new_linearized, new_state))
                    stack.append((entry, state))
                    if len(stack) > len(best):
                        best = [e.op_index for e, _ in stack]
                    state, linearized = new_state, new_linearized
                    _lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            if not stack:
                return False, best
            entry, state = stack.pop()
            linearized &= ~(1 << entry.op_index)
            _unlift(entry)
            entry = entry.next
    return True, []


def _explain(key: str, ops: list[Operation], best: list[int]) -> str:
    lines = [f"history of key {key!r} is not linearizable ({len(ops)} operations):"]
    lines += ["  " + op.describe() for op in sorted(ops, key=lambda o: o.call)]
    lines.append(f"longest linearizable prefix ({len(best)} operations):")
    state = INITIAL
    for i in best:
        _, state = step(state, ops[i])
        lines.append(f"  {ops[i].describe()}   => state {state}")
    linearized = set(best)
    rest = [op for i, op in enumerate(ops) if i not in linearized]
    lines.append("none of these can come next:")
    lines += ["  " + op.describe() for op in sorted(rest, key=lambda o: o.call)]
    return "\n".join(lines)
