"""The pure Raft rules, without an event loop (log matching, back-up hints, quorums)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from trioraft.raft.log import Entry, Log, is_up_to_date, match_append, next_index_after_reject
from trioraft.raft.quorum import committed_index, majority, quorum_index, won


def log_of(*terms: int, snapshot: tuple[int, int] = (0, 0)) -> Log:
    log = Log(*snapshot)
    log.append([Entry(t, f"c{i}") for i, t in enumerate(terms)])
    return log


def test_up_to_date_compares_term_then_length() -> None:
    """Reference: Raft §5.4.1."""
    assert is_up_to_date(5, 3, 9, 2)  # higher last term wins over a longer log
    assert not is_up_to_date(9, 2, 5, 3)
    assert is_up_to_date(5, 3, 5, 3) and not is_up_to_date(4, 3, 5, 3)


def test_append_rejects_a_missing_or_mismatched_prev_entry() -> None:
    """Reference: Raft §5.3, the consistency check, with the fast back-up hint."""
    log = log_of(1, 1, 2, 2, 2)
    short = match_append(log, 7, 3, [])
    assert (short.success, short.conflict_term, short.conflict_index) == (False, 0, 6)
    wrong = match_append(log, 4, 3, [])
    assert (wrong.success, wrong.conflict_term, wrong.conflict_index) == (False, 2, 3)


def test_append_truncates_only_from_the_first_conflict() -> None:
    log = log_of(1, 1, 2, 2)
    result = match_append(log, 1, 1, [Entry(1, "c1"), Entry(3, "new")])
    assert result.success and result.truncate_from == 3 and result.match_index == 3
    assert result.new_entries == (Entry(3, "new"),)


def test_stale_append_never_truncates_matching_entries() -> None:
    log = log_of(1, 1, 1, 1)
    result = match_append(log, 0, 0, [Entry(1, "c0")])  # an old, shorter AppendEntries
    assert result.success and result.truncate_from is None and result.new_entries == ()
    assert result.match_index == 1


def test_append_below_the_snapshot_skips_the_covered_prefix() -> None:
    log = log_of(2, 2, snapshot=(5, 2))
    result = match_append(log, 3, 1, [Entry(1, "a"), Entry(2, "b"), Entry(2, "c"), Entry(3, "d")])
    assert result.success and result.match_index == 7
    assert result.truncate_from == 7 and result.new_entries == (Entry(3, "d"),)
    covered = match_append(log, 1, 1, [Entry(1, "a")])
    assert covered.success and covered.match_index == 2


def test_leader_uses_the_hint_to_skip_a_whole_term() -> None:
    leader = log_of(1, 1, 4, 4, 5, 5)
    assert next_index_after_reject(leader, 4, 3) == 5  # leader has term 4: after its last
    assert next_index_after_reject(leader, 3, 2) == 2  # leader lacks term 3: follower's first
    assert next_index_after_reject(leader, 0, 4) == 4  # follower's log was too short


def test_compact_keeps_the_suffix_only_when_it_matches() -> None:
    log = log_of(1, 1, 2, 2)
    log.compact(2, 1)
    assert (log.snapshot_index, log.last_index, log.term_at(3)) == (2, 4, 2)
    log.compact(3, 9)  # a snapshot from another history: nothing of ours survives
    assert (log.snapshot_index, log.last_index, log.entries) == (3, 3, [])


def naive_commit(matches: list[int], terms: list[int], current_term: int, old: int) -> int:
    best = old
    for n in range(old + 1, max(matches) + 1):
        replicas = sum(1 for m in matches if m >= n)
        if replicas * 2 > len(matches) and terms[n - 1] == current_term:
            best = n
    return best


@given(
    st.lists(st.integers(1, 4), min_size=1, max_size=12).map(sorted),
    st.lists(st.integers(0, 12), min_size=1, max_size=7),
    st.integers(0, 12),
)
def test_committed_index_matches_the_naive_definition(
    terms: list[int], raw_matches: list[int], raw_old: int
) -> None:
    """Reference: Raft §5.4.2: only current-term entries commit by counting replicas."""
    matches = [min(m, len(terms)) for m in raw_matches]
    old = min(raw_old, len(terms))
    current = terms[-1]
    log = log_of(*terms)
    assert committed_index(matches, log.term_at, current, old) == naive_commit(
        matches, terms, current, old
    )


def test_quorum_sizes() -> None:
    assert [majority(n) for n in range(1, 8)] == [1, 2, 2, 3, 3, 4, 4]
    assert quorum_index([5, 3, 9]) == 5 and quorum_index([1, 2, 3, 4, 5]) == 3
    assert won(3, 5) and not won(2, 5) and won(1, 1)


def test_quorum_index_without_the_leaders_copy_counts_only_followers() -> None:
    # The leader times its followers this way: its own match index counted as 0.
    assert quorum_index([0, 5, 3]) == 3  # both followers of three voters
    assert quorum_index([0, 9, 1, 7, 5]) == 5  # three of four followers
    assert quorum_index([0, 4]) == 0  # one follower never commits alone
    assert quorum_index([0]) == 0
