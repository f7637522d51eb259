"""Quorum arithmetic: pure functions over the cluster's voters.

Invariants:
- A majority of ``n`` voters is ``n // 2 + 1``; two majorities always intersect.
- :func:`committed_index` only ever lets a leader commit an entry of its own term by
  counting replicas (Raft §5.4.2); earlier entries commit along with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable


def majority(voters: int) -> int:
    return voters // 2 + 1


def quorum_index(match_indexes: Iterable[int]) -> int:
    """The highest index that a majority of the voters (all of ``match_indexes``) hold."""
    ordered = sorted(match_indexes, reverse=True)
    return ordered[majority(len(ordered)) - 1]


def committed_index(
    match_indexes: Iterable[int],
    term_at: Callable[[int], int | None],
    current_term: int,
    old_commit: int,
) -> int:
    """The commit index after counting replicas (``match_indexes`` includes the leader's).

    Only an entry of ``current_term`` may be committed by counting; it never goes back.
    """
    candidate = quorum_index(match_indexes)
    if candidate > old_commit and term_at(candidate) == current_term:
        return candidate
    return old_commit


def won(votes_granted: int, voters: int) -> bool:
    return votes_granted >= majority(voters)
