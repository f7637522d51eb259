"""A linearizability checker for any sequential model (Wing & Gong search, Lowe's refinement).

A history is a list of :class:`Operation` records: who called, with what input, when it was
called and returned (one monotonic clock), and what it returned. A :class:`Model` says what a
correct sequential object does: ``step(state, input, output)`` answers whether that output is
legal in that state, and the state that follows. :func:`check_operations` searches for a
total order of the operations that respects real time (an op that returned before another
was called comes first) and in which every step is legal.

Rules the search keeps:
- ``ret is None``: the op never returned. It may take effect at any time after its call, or
  never: the history is linearizable if some order includes every op that returned and any
  subset of those that did not.
- ``optional``: the op returned but may not have taken effect (a retried write that cannot
  tell): it takes effect between its call and its return, or never.
- ``output is None``: the op's outcome is unknown; ``step`` sees that ``None`` and decides.
- Ops whose intervals touch (one returns at the very time another is called) are concurrent.
- States must be hashable and compare by value (tuples, strings, numbers, frozen
  dataclasses, frozensets): the search memoises every ``(set of ops linearized, state)`` it
  has tried, so no configuration is explored twice. ``step`` must be a pure function.
- ``partition(ops)``, if given, splits a history into independent parts (per key, say): the
  history is linearizable iff every part is, and each part is searched on its own.
- Read-only ops (see :class:`Model`) legal in a configuration are linearized there at once
  and never moved later: a sound shortcut that keeps concurrent reads from multiplying the
  configurations to explore. Ops that never returned are spared the same way (see
  :func:`_search`): they are never linearized where they change nothing, nor where the same
  state is reached with fewer of them.
- The verdict ``ok`` is ``True``, ``False``, or ``None`` when ``timeout`` ran out first. A
  failure names the smallest failing part, the longest linearizable prefix the search found
  in it, and the op that cannot follow that prefix; :meth:`Result.write_html` draws it.

The search (Lowe, "Testing for linearizability", 2017; as in porcupine) walks a doubly linked
list of call and return events in time order. Linearizing an op lifts its two events out of
the list; meeting a return event means that op should already have been linearized, so the
search backtracks. Every step is O(1) list surgery plus one ``step`` call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

S = TypeVar("S", bound=Hashable)  # a model's state
In = TypeVar("In")  # an operation's input
Out = TypeVar("Out")  # its output

#: How many search steps run between two looks at the clock.
_STEPS_PER_CLOCK_CHECK = 4096


@dataclass(frozen=True, slots=True)
class Operation(Generic[In, Out]):
    """One call as its caller saw it. ``ret`` is ``None`` if it never returned; ``output``
    is ``None`` if its outcome is unknown; ``optional`` if it returned but may not have
    taken effect (it then takes effect before ``ret``, or never)."""

    client: Hashable
    input: In
    call: float
    output: Out | None
    ret: float | None
    optional: bool = False


@dataclass(frozen=True)
class Model(Generic[S, In, Out]):
    """A sequential specification.

    ``init`` is the initial state (a hashable value, not a function); ``step(state, input,
    output)`` returns ``(legal, next_state)``; ``partition(ops)`` splits a history into
    independent lists of ops; ``describe_operation(input, output)`` and
    ``describe_state(state)`` word the explanation of a failure (``repr`` by default).

    ``read_only(input, output)``, if given, must answer ``True`` only for an op that leaves
    the state unchanged in *every* state where it is legal (a read; a compare-and-set that
    answered "no swap"). The search then linearizes such an op as soon as it is legal and
    never tries it later, which is sound (if a linearization exists, one with the op moved
    to that point exists too: it changes nothing and nothing after it) and spares the
    search from trying every subset of concurrent reads: without it, histories with many
    concurrent clients can take exponential time.

    ``inert(state, input, output)``, if given, is the same shortcut decided per state: it
    must answer ``True`` only if the op is legal in ``state`` and leaves unchanged every
    state reachable from ``state`` in which it is legal (a put of unknown outcome naming a
    version the object has gone past, where versions only grow). Such an op is linearized
    at once, for good: many concurrent writes of unknown outcome otherwise make the search
    try every subset of those that lost.
    """

    init: S
    step: Callable[[S, In, Out | None], tuple[bool, S]]
    partition: Callable[[list[Operation[In, Out]]], list[list[Operation[In, Out]]]] | None = None
    read_only: Callable[[In, Out | None], bool] | None = None
    inert: Callable[[S, In, Out | None], bool] | None = None
    describe_operation: Callable[[In, Out | None], str] | None = None
    describe_state: Callable[[S], str] | None = None

    def operation_text(self, op: Operation[In, Out]) -> str:
        """What the op did, in the model's words."""
        if self.describe_operation is not None:
            return self.describe_operation(op.input, op.output)
        return f"{op.input!r} -> {op.output!r}"

    def describe(self, op: Operation[In, Out]) -> str:
        """One line: interval, client and what the op did."""
        end = "never returned" if op.ret is None else f"{op.ret:.6f}"
        return f"[{op.call:.6f} .. {end}] client {op.client}: {self.operation_text(op)}"

    def state_text(self, state: S) -> str:
        return self.describe_state(state) if self.describe_state is not None else repr(state)


@dataclass(frozen=True)
class Failure(Generic[S, In, Out]):
    """Why one part of a history is not linearizable.

    ``prefix`` lists indexes into ``operations`` in the order the longest linearization the
    search found takes them, and ``states[k]`` is the state after ``prefix[k]``;
    ``culprit`` is the op that cannot follow that prefix: of the ops left, the first to have
    returned, so it must come before every op called after that.
    """

    part: int
    operations: list[Operation[In, Out]]
    prefix: list[int]
    states: list[S]
    culprit: int


@dataclass
class Result(Generic[S, In, Out]):
    """The verdict: ``ok`` is ``True``, ``False``, or ``None`` if the search timed out."""

    ok: bool | None
    model: Model[S, In, Out]
    operations: list[Operation[In, Out]] = field(repr=False)
    parts: int = 0
    failure: Failure[S, In, Out] | None = None
    account: str = ""

    def __bool__(self) -> bool:
        return self.ok is True

    def write_html(self, path: str | Path) -> Path:
        """Draw the history (the failing part if any) as a self-contained HTML page."""
        from ._visualize import render_html

        target = Path(path)
        target.write_text(render_html(self), encoding="utf-8")
        return target


def check_operations(
    model: Model[S, In, Out], operations: Sequence[Operation[In, Out]], timeout: float | None = None
) -> Result[S, In, Out]:
    """Is the history linearizable with respect to ``model``? Stops after ``timeout`` s."""
    ops = list(operations)
    for op in ops:
        if op.ret is not None and op.ret < op.call:
            raise ValueError(f"an operation returned before it was called: {op}")
    parts = model.partition(ops) if model.partition is not None else [ops]
    deadline = math.inf if timeout is None else time.monotonic() + timeout
    failures: list[Failure[S, In, Out]] = []
    timed_out = False
    for number, part in enumerate(parts):
        verdict, prefix = _search(model, part, deadline)
        if verdict is None:
            timed_out = True
            break
        if not verdict:
            failures.append(_failure(model, number, part, prefix))
    if failures:
        smallest = min(failures, key=lambda f: (len(f.operations), f.part))
        return Result(False, model, ops, len(parts), smallest, _explain(model, smallest, parts))
    if timed_out:
        account = f"the search ran out of time ({timeout} s): no verdict"
        return Result(None, model, ops, len(parts), account=account)
    return Result(True, model, ops, len(parts))


#: The passes over the candidates of a configuration, in order; and the mark of an optional
#: op left out at its return.
_FORCE, _RETURNED, _WAITING, _DROPPED = 0, 1, 2, 3


def _search(
    model: Model[S, In, Out], ops: list[Operation[In, Out]], deadline: float
) -> tuple[bool | None, list[int]]:
    """One part: the verdict, and on failure the longest linearization found (op indexes).

    Events are numbered ``2 * i`` (op i's call) and ``2 * i + 1`` (its return); the list
    is kept in ``after``/``before`` arrays, with ``head`` (= 2n) before the first event.
    The candidates of a configuration (the calls before the first return left) are tried
    in three passes: ``_FORCE`` linearizes every read-only op legal there, and every op
    that returned and is inert there (see :class:`Model`), for good; then
    ``_RETURNED`` tries the other ops that returned, one by one, and ``_WAITING`` those
    that never did (so the configurations without them are explored, and failed, first).

    An optional op (see :class:`Operation`) is tried like any op that returned; when its
    return is the first left and every candidate has been tried, the last choice is to
    leave it out (``_DROPPED``, always legal), and backtracking passes over it.

    Pruning, each sound: a configuration already explored is not explored again; one that
    adds ops that never returned to a failed configuration with the same state fails too
    (those ops may as well never take effect); an op that never returned is not
    linearized where it changes nothing, nor where another choice reaches the same state
    with fewer such ops (see :func:`_redundant`). Only configurations that failed prune
    others, never those still open on the current path.
    """
    n = len(ops)
    inputs = [op.input for op in ops]
    outputs = [op.output for op in ops]
    pending = [op.ret is None for op in ops]
    optional = [op.optional and op.ret is not None for op in ops]
    read_only, inert = model.read_only, model.inert
    forceable = [read_only is not None and read_only(op.input, op.output) for op in ops]
    pass_of = [_FORCE if forceable[i] else _WAITING if pending[i] else _RETURNED for i in range(n)]
    times = [t for op in ops for t in (op.call, math.inf if op.ret is None else op.ret)]
    # A read-only op that never returned can always be left out: it is not even listed.
    listed = [e for e in range(2 * n) if not (pending[e >> 1] and forceable[e >> 1])]
    # At equal times calls come before returns (touching intervals are concurrent); then
    # events keep the order of the ops given, so the search is the same on every run.
    order = sorted(listed, key=lambda e: (times[e], e & 1, e))
    head, end = 2 * n, -1
    after = [end] * (2 * n + 1)
    before = [end] * (2 * n + 1)
    previous = head
    for e in order:
        after[previous], before[e] = e, previous
        previous = e

    # The set of ops linearized, in three small numbers: ``low``, how many returned ops
    # (in call order) are all linearized; ``high``, a bit per returned op after those; and
    # ``waiting``, a bit per op that never returned. The search goes roughly in call
    # order, so ``high`` spans only the ops in flight at once.
    returned = sorted((i for i in range(n) if not pending[i]), key=lambda i: (ops[i].call, i))
    rank = [0] * n
    for r, i in enumerate(returned):
        rank[i] = r
    for r, i in enumerate(i for i in range(n) if pending[i]):
        rank[i] = r

    step = model.step
    state = model.init
    low, high, waiting = 0, 0, 0
    # When the last ops linearized all never returned: the state before the first of them.
    chain_base: S | None = None
    # (low, high, state) -> the ``waiting`` sets tried with it; those on the current path
    # (``open``) have not failed yet.
    seen: dict[tuple[int, int, Hashable], list[int]] = {}
    open_: set[tuple[int, int, int, Hashable]] = set()
    # (call event lifted, its pass; and before it: state, low, high, waiting, chain_base)
    stack: list[tuple[int, int, S, int, int, int, S | None]] = []
    best: list[int] = []
    best_length, best_stale = 0, False
    steps = 0
    entry, current_pass = after[head], _FORCE
    while entry != end:
        steps += 1
        if steps % _STEPS_PER_CLOCK_CHECK == 0 and time.monotonic() > deadline:
            return None, []
        op = entry >> 1
        if not entry & 1:  # a call: try to linearize its op here
            if pass_of[op] != current_pass and not (
                current_pass == _FORCE
                and inert is not None
                and not pending[op]
                and inert(state, inputs[op], outputs[op])
            ):
                entry = after[entry]
                continue
            legal, new_state = step(state, inputs[op], outputs[op])
            if (
                not legal
                or (pending[op] and _redundant(model, state, new_state, chain_base, ops[op]))
                or (optional[op] and new_state == state)  # as if left out at its return
            ):
                entry = after[entry]
                continue
            new_low, new_high, new_waiting = low, high, waiting
            if pending[op]:
                new_waiting |= 1 << rank[op]
            elif rank[op] == low:  # the first op not linearized: move past all that follow
                ones = high | 1
                run = (ones ^ (ones + 1)).bit_length() - 1
                new_low, new_high = low + run, ones >> run
            else:
                new_high |= 1 << (rank[op] - low)
            key = (new_low, new_high, new_state)
            tried = seen.setdefault(key, [])
            # Explored already, or failed with fewer ops that never returned?
            if not any(old & ~new_waiting == 0 and (*key, old) not in open_ for old in tried):
                tried.append(new_waiting)
                open_.add((*key, new_waiting))
                stack.append((entry, current_pass, state, low, high, waiting, chain_base))
                if len(stack) > best_length:
                    best_length, best_stale = len(stack), True
                if pending[op] and chain_base is None:
                    chain_base = state
                elif not pending[op]:
                    chain_base = None
                state, low, high, waiting = new_state, new_low, new_high, new_waiting
                _lift(entry, after, before)
                entry, current_pass = after[head], _FORCE
                continue
            if current_pass != _FORCE:
                entry = after[entry]
                continue
            # A read-only op legal here leads to a failed configuration: so does this one.
        elif pending[op]:
            # A return of an op that never returned: every op left never returned either
            # (their returns sort last), so they may all never take effect: we are done.
            return True, []
        elif current_pass != _WAITING:  # this pass is over: the next one
            entry, current_pass = after[head], current_pass + 1
            continue
        elif optional[op]:
            # Every candidate was tried: the last choice is that the optional op whose
            # return comes first never took effect. Leave it out.
            ones = high | 1 if rank[op] == low else high | 1 << (rank[op] - low)
            new_low, new_high = low, ones
            if rank[op] == low:
                run = (ones ^ (ones + 1)).bit_length() - 1
                new_low, new_high = low + run, ones >> run
            key = (new_low, new_high, state)
            tried = seen.setdefault(key, [])
            if not any(old & ~waiting == 0 and (*key, old) not in open_ for old in tried):
                tried.append(waiting)
                open_.add((*key, waiting))
                stack.append((entry - 1, _DROPPED, state, low, high, waiting, chain_base))
                if len(stack) > best_length:
                    best_length, best_stale = len(stack), True
                low, high, chain_base = new_low, new_high, None
                _lift(entry - 1, after, before)
                entry, current_pass = after[head], _FORCE
                continue
        # Backtrack: undo forced ops down to the last real choice, and try the next one.
        while True:
            if not stack:
                return False, best
            if best_stale:  # copy the longest linearization only when leaving it
                best = [frame[0] >> 1 for frame in stack if frame[1] != _DROPPED]
                best_stale = False
            open_.discard((low, high, state, waiting))
            entry, current_pass, state, low, high, waiting, chain_base = stack.pop()
            _unlift(entry, after, before)
            if current_pass not in (_FORCE, _DROPPED):
                break
        entry = after[entry]
    return True, []


def _redundant(
    model: Model[S, In, Out], state: S, new_state: S, chain_base: S | None, op: Operation[In, Out]
) -> bool:
    """Should an op that never returned, legal in ``state``, be left out here?

    Yes if it changes nothing: it may as well take effect later, or never. Yes too if the
    ops linearized since ``chain_base`` all never returned and the op, taken right at the
    base, changes the base state to the same ``new_state``: that configuration has the same
    ops that returned, the same state and fewer that never returned, so it has every
    linearization this one has; the search explores it on its own (before or after this
    one, as another choice at the base).
    """
    if new_state == state:
        return True
    if chain_base is None:
        return False
    legal_at_base, state_at_base = model.step(chain_base, op.input, op.output)
    return legal_at_base and state_at_base != chain_base and state_at_base == new_state


def _lift(call: int, after: list[int], before: list[int]) -> None:
    """Unlink a call event and its return (``call + 1``); their own links are kept."""
    for e in (call, call + 1):
        prev, nxt = before[e], after[e]
        after[prev] = nxt
        if nxt != -1:
            before[nxt] = prev


def _unlift(call: int, after: list[int], before: list[int]) -> None:
    """Undo :func:`_lift` (lifts are undone in the reverse order they were done)."""
    for e in (call + 1, call):
        prev, nxt = before[e], after[e]
        after[prev] = e
        if nxt != -1:
            before[nxt] = e


def _failure(
    model: Model[S, In, Out], number: int, ops: list[Operation[In, Out]], prefix: list[int]
) -> Failure[S, In, Out]:
    states: list[S] = []
    state = model.init
    for i in prefix:
        _, state = model.step(state, ops[i].input, ops[i].output)
        states.append(state)
    linearized = set(prefix)
    left = [
        i
        for i in range(len(ops))
        if i not in linearized and ops[i].ret is not None and not ops[i].optional
    ]
    culprit = min(left, key=lambda i: (ops[i].ret, ops[i].call, i))
    return Failure(number, ops, prefix, states, culprit)


def _explain(
    model: Model[S, In, Out], failure: Failure[S, In, Out], parts: list[list[Operation[In, Out]]]
) -> str:
    ops = failure.operations
    by_call = sorted(range(len(ops)), key=lambda i: (ops[i].call, i))
    lines = [
        f"not linearizable: part {failure.part + 1} of {len(parts)} "
        f"({len(ops)} operations; the smallest failing part):"
    ]
    lines += ["  " + model.describe(ops[i]) for i in by_call]
    lines.append(f"longest linearizable prefix ({len(failure.prefix)} operations):")
    lines.append(f"      initial state {model.state_text(model.init)}")
    for k, (i, state) in enumerate(zip(failure.prefix, failure.states, strict=True), 1):
        lines.append(f"  {k:3}. {model.describe(ops[i])}   => {model.state_text(state)}")
    final = failure.states[-1] if failure.states else model.init
    culprit = ops[failure.culprit]
    lines.append("cannot follow it (the first of the rest to return, so it must come next):")
    lines.append(f"  {model.describe(culprit)}")
    linearized = set(failure.prefix)
    rest = [i for i in by_call if i not in linearized]
    # The ops that could come next in real time: called before the culprit returned.
    candidates = [i for i in rest if ops[i].call <= (culprit.ret or math.inf)]
    lines.append(f"none of these may come next, in state {model.state_text(final)}:")
    for i in candidates:
        legal, _ = model.step(final, ops[i].input, ops[i].output)
        why = "legal, but no linearization goes on from it" if legal else "illegal"
        lines.append(f"  {model.describe(ops[i])}   ({why})")
    return "\n".join(lines)
