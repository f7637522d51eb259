"""The versioned KV with delete and append, as a model for linearizability checking.

Plain data only (no trioraft types), so that any checker can drive it: the state of one key
is ``(value, version)``, initially :data:`INITIAL` (absent). :func:`step` says which states
an operation may leave, given the state it is linearized in and what its caller saw; keys
are independent, so a history may be checked key by key.

Operations (``kind``, with ``value``/``version`` as the caller sent or, for a get, saw them,
and ``err`` the outcome; :data:`UNKNOWN` for one that never returned):
- ``get``: legal iff it saw exactly the state (``err`` ``OK``, or ``NoKey`` at version 0).
- ``put(value, version)``: applies iff ``version`` is the state's; then ``OK``; otherwise
  ``Version`` when the key exists, ``NoKey`` when it is absent.
- ``delete(version)``: applies iff ``version`` is the state's and the key exists; then
  ``OK``; otherwise ``Version`` when the key exists, ``NoKey`` when it is absent.
- ``append(value)``: always applies (``OK``).
- A put or delete that answered ``Maybe``, or never returned, applies exactly when its
  condition holds at its linearization point (a checker may also never linearize one that
  never returned). An append that answered ``SessionExpired`` or never returned may or may
  not have applied: both states are possible.
"""

from __future__ import annotations

OK, NO_KEY, VERSION, MAYBE = "OK", "NoKey", "Version", "Maybe"
SESSION_EXPIRED = "SessionExpired"
#: The ``err`` of an operation that never returned.
UNKNOWN = ""

State = tuple[str, int]
INITIAL: State = ("", 0)
ABSENT: State = ("", 0)


def step(state: State, kind: str, value: str, version: int, err: str) -> list[State]:
    """The states the key may be in after the operation, linearized in ``state``; ``[]``
    when its outcome is impossible there."""
    current_value, current_version = state
    exists = current_version > 0
    if kind == "get":
        return [state] if (value, version) == state else []
    if kind == "put":
        applies = version == current_version
        after = (value, current_version + 1)
        return _conditional(state, after, applies, exists, err)
    if kind == "delete":
        applies = exists and version == current_version
        return _conditional(state, ABSENT, applies, exists, err)
    if kind == "append":
        after = (current_value + value, current_version + 1)
        if err == OK:
            return [after]
        if err in (SESSION_EXPIRED, UNKNOWN, MAYBE):
            return [state, after]
        return []
    raise ValueError(f"unknown operation kind {kind!r}")


def _conditional(state: State, after: State, applies: bool, exists: bool, err: str) -> list[State]:
    if err in (MAYBE, UNKNOWN):
        return [after] if applies else [state]
    if err == OK:
        return [after] if applies else []
    if applies:
        return []  # it would have applied
    if err == VERSION:
        return [state] if exists else []
    if err == NO_KEY:
        return [state] if not exists else []
    return []
