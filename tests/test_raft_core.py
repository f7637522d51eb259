"""The pure Raft core driven message by message: each test is a transcript of what goes in
(requests, replies, proposals, "persisted up to", the time) and the actions that come out."""

from __future__ import annotations

import random
import subprocess
import sys
from dataclasses import replace

import pytest

from trioraft._errors import BadRequest, NotLeader
from trioraft.raft.config import RaftConfig
from trioraft.raft.core import (
    NOOP_COMMAND,
    BecomeLeader,
    ConfigurationChanged,
    LostEntries,
    PersistHardState,
    PersistLog,
    RaftCore,
    Reply,
    Role,
    Send,
    StateChanged,
    StepDown,
)
from trioraft.raft.log import Entry, Log
from trioraft.raft.membership import (
    Configuration,
    MembershipChange,
    MembershipChangeRefused,
    encode_configuration,
)
from trioraft.raft.messages import (
    AppendEntriesArgs,
    AppendEntriesReply,
    RequestVoteArgs,
    RequestVoteReply,
    TimeoutNowArgs,
)

CONFIG = RaftConfig(election_timeout=(1.0, 2.0), heartbeat_interval=0.1)
VOTERS = ("a", "b", "c")


def make_core(
    node_id: str,
    terms: list[int] | None = None,
    *,
    term: int = 0,
    config: RaftConfig = CONFIG,
    voters: tuple[str, ...] = VOTERS,
) -> RaftCore:
    log = Log()
    log.append([Entry(t, f"{node_id}{i}") for i, t in enumerate(terms or [], 1)])
    core = RaftCore(
        node_id,
        voters,
        term=max([term, *(terms or [])]),
        voted_for=None,
        log=log,
        config=config,
        rng=random.Random(node_id),
    )
    core.reset_election_deadline(0.0)
    return core


def of_type(actions: list, kind: type) -> list:
    return [a for a in actions if isinstance(a, kind)]


def reply_of(actions: list):
    (reply,) = of_type(actions, Reply)
    return reply.message


def elect(leader: RaftCore, voters: list[RaftCore], now: float) -> list:
    """Drive ``leader``'s campaign (pre-vote, then vote) through ``voters``; every action."""
    everything = leader.tick(now)
    for _ in range(2):  # the pre-vote round, then the vote round
        sends = of_type(everything, Send)
        for send in sends:
            for voter in voters:
                if voter.id == send.to:
                    reply = reply_of(voter.step_request_vote(send.message, now))
                    everything += leader.step_vote_reply(voter.id, send.message, reply, now)
    return everything


def replicate(leader: RaftCore, follower: RaftCore, now: float) -> list:
    """One AppendEntries from ``leader`` to ``follower`` and back; the leader's actions."""
    sent = leader.replication_message(follower.id, now)
    assert sent.args is not None
    follower_actions = follower.step_append_entries(sent.args, now)
    for action in of_type(follower_actions, PersistLog):
        follower.persisted(action.durable_through)
    return leader.step_append_reply(follower.id, sent, reply_of(follower_actions), now)


def test_election_with_pre_vote() -> None:
    a, b, c = make_core("a"), make_core("b"), make_core("c")
    assert a.tick(0.5) == []  # before the deadline nothing happens
    pre = a.tick(10.0)
    assert a.term == 0 and a.role is Role.FOLLOWER  # a pre-vote changes no term
    assert not of_type(pre, PersistHardState)
    assert {(s.to, s.message.pre_vote, s.message.term) for s in of_type(pre, Send)} == {
        ("b", True, 1),
        ("c", True, 1),
    }
    pre_args = of_type(pre, Send)[0].message
    b_actions = b.step_request_vote(pre_args, 10.0)
    assert b_actions == [Reply(RequestVoteReply(0, True))] and b.term == 0  # nothing persisted
    vote = a.step_vote_reply("b", pre_args, RequestVoteReply(0, True), 10.0)
    assert vote[0] == PersistHardState(1, "a")  # durable before the requests go out
    assert a.role is Role.CANDIDATE and a.term == 1
    vote_args = of_type(vote, Send)[0].message
    assert not vote_args.pre_vote
    granted = c.step_request_vote(vote_args, 10.0)
    assert granted[0] == PersistHardState(1, "a") and reply_of(granted).granted
    won = a.step_vote_reply("c", vote_args, reply_of(granted), 10.0)
    assert BecomeLeader(1) in won and a.role is Role.LEADER and a.leader_id == "a"
    # A late answer to the finished pre-vote changes nothing.
    assert a.step_vote_reply("c", pre_args, RequestVoteReply(0, True), 10.0) == []


def test_pre_vote_refused_while_the_leader_is_heard() -> None:
    a, b, c = make_core("a"), make_core("b"), make_core("c")
    elect(a, [b, c], 10.0)
    replicate(a, b, 10.0)
    pre = c.tick(100.0)  # c heard nothing: it asks
    reply = reply_of(b.step_request_vote(of_type(pre, Send)[0].message, 10.5))
    assert not reply.granted and b.term == 1


def test_vote_refused_for_a_stale_log() -> None:
    voter = make_core("b", [1, 2, 2])
    args = RequestVoteArgs(3, "a", last_log_index=5, last_log_term=1)  # longer, older term
    actions = voter.step_request_vote(args, 50.0)
    assert actions[0] == PersistHardState(3, None)  # the term moves, the vote does not
    assert reply_of(actions) == RequestVoteReply(3, False) and voter.voted_for is None
    # Once granted, a vote in a term is never given to another candidate.
    up_to_date = RequestVoteArgs(3, "c", last_log_index=3, last_log_term=2)
    assert reply_of(voter.step_request_vote(up_to_date, 50.0)).granted
    other = RequestVoteArgs(3, "a", last_log_index=9, last_log_term=3)
    assert not reply_of(voter.step_request_vote(other, 50.0)).granted


def test_log_conflict_and_truncation() -> None:
    follower = make_core("b", [1, 1, 2, 2])
    # The leader of term 3 holds 1,1 then 3,3: the follower says where its term 2 starts.
    mismatch = AppendEntriesArgs(3, "a", 4, 3, [], 0)
    actions = follower.step_append_entries(mismatch, 5.0)
    assert reply_of(actions) == AppendEntriesReply(3, False, 0, 2, 3)
    assert actions[0] == PersistHardState(3, None)
    fix = AppendEntriesArgs(3, "a", 2, 1, [Entry(3, "x"), Entry(3, "y")], 1)
    actions = follower.step_append_entries(fix, 5.0)
    assert of_type(actions, PersistLog) == [PersistLog(truncate_from=3, durable_through=4)]
    assert actions.index(of_type(actions, PersistLog)[0]) < actions.index(Reply(reply_of(actions)))
    assert [e.term for e in follower.log.entries] == [1, 1, 3, 3]
    assert reply_of(actions) == AppendEntriesReply(3, True, 4)
    assert follower.commit_index == 1 and follower.durable_index == 2  # until persisted
    # A stale, reordered copy of an earlier message truncates nothing.
    stale = AppendEntriesArgs(3, "a", 2, 1, [Entry(3, "x")], 1)
    actions = follower.step_append_entries(stale, 5.0)
    assert of_type(actions, PersistLog)[0].truncate_from is None
    assert len(follower.log.entries) == 4
    # Removing a committed entry is refused and changes nothing.
    follower.step_append_entries(AppendEntriesArgs(3, "a", 4, 3, [], 4), 5.0)
    with pytest.raises(BadRequest):
        follower.step_append_entries(AppendEntriesArgs(4, "c", 2, 1, [Entry(4, "z")], 4), 5.0)
    assert follower.term == 3 and follower.leader_id == "a"


def test_leader_commits_only_its_own_terms_entries_by_counting() -> None:
    a = make_core("a", [1, 2])
    b, c = make_core("b", [1]), make_core("c", [1])
    elect(a, [b, c], 10.0)
    assert a.term == 3 and a.role is Role.LEADER
    a.persisted(2)
    for _ in range(3):
        replicate(a, b, 10.0)
    assert b.log.last_index == 2 and a.progress["b"].match == 2
    assert a.commit_index == 0  # entry 2 (term 2) is on a majority, but not of term 3
    a.propose(["x"])
    replicate(a, b, 10.1)
    assert a.progress["b"].match == 3 and a.commit_index == 0  # a itself has not persisted 3
    a.persisted(3)
    assert a.commit_index == 3  # the term-3 entry commits, and with it entry 2


def test_leader_counts_itself_only_up_to_its_durable_index() -> None:
    a, b, c = make_core("a"), make_core("b"), make_core("c")
    elect(a, [b, c], 10.0)
    a.propose(["x"])
    replicate(a, b, 10.0)
    assert a.commit_index == 0  # b holds it, but a has not persisted it: no majority
    replicate(a, c, 10.0)
    assert a.commit_index == 1  # the followers alone make a majority: no fsync needed here
    a.propose(["y"])
    a.persisted(2)
    replicate(a, b, 10.1)
    assert a.commit_index == 2


def test_check_quorum_steps_down() -> None:
    a, b, c = make_core("a"), make_core("b"), make_core("c")
    elect(a, [b, c], 10.0)
    replicate(a, b, 11.0)
    assert a.check_quorum(12.5) == []  # b answered within an election timeout
    actions = a.check_quorum(13.5)
    assert StepDown(1) in actions and a.role is Role.FOLLOWER and a.leader_id is None
    assert not of_type(actions, PersistHardState)  # the term did not move
    with pytest.raises(NotLeader):
        a.propose(["x"])


def test_stale_reply_is_ignored() -> None:
    a, b, c = make_core("a"), make_core("b"), make_core("c")
    elect(a, [b, c], 10.0)
    a.propose(["x"])
    old = a.replication_message("b", 10.0)
    # a loses its leadership to a newer term, then wins again (term 3).
    a.step_newer_term(2)
    elect(a, [b, c], 30.0)
    assert a.term == 3 and a.progress["b"].match == 0
    # The answer to term 1's message arrives now: it changes nothing.
    assert a.step_append_reply("b", old, AppendEntriesReply(1, True, 1), 30.0) == []
    assert a.progress["b"].match == 0 and a.progress["b"].acked_round == 0


def test_rejection_below_the_acknowledged_index_is_reported() -> None:
    a, b, c = make_core("a"), make_core("b"), make_core("c")
    elect(a, [b, c], 10.0)
    a.propose(["x", "y"])
    replicate(a, b, 10.0)
    sent = a.replication_message("b", 10.1)
    actions = a.step_append_reply("b", sent, AppendEntriesReply(1, False, 0, 0, 1), 10.1)
    assert of_type(actions, LostEntries) == [LostEntries("b", 2, 1)]
    assert a.progress["b"].match == 0 and a.progress["b"].next == 1


def test_a_heartbeat_beside_a_call_confirms_contact_and_moves_no_progress() -> None:
    """What ``RaftNode._keep_alive`` sends while a replication message is in flight: its
    answer counts for check-quorum and read rounds, and moves neither ``match`` nor
    ``next``, whether it comes before or after the message's own answer."""
    a, b, c = make_core("a"), make_core("b"), make_core("c")
    elect(a, [b, c], 10.0)
    a.propose(["x", "y"])
    in_flight = a.replication_message("b", 10.0)  # entries 1-2, answer not in yet
    round_ = a.queue_read()
    beat = a.heartbeat_message("b", 10.5)
    assert beat.args is not None and beat.args.entries == []
    assert beat.args.prev_log_index == 0  # the progress the leader knows: nothing yet
    beat_reply = reply_of(b.step_append_entries(beat.args, 10.5))
    assert beat_reply.success and b.leader_id == "a"
    actions = a.step_progressless_reply("b", beat, beat_reply.term, 10.5)
    assert (a.progress["b"].match, a.progress["b"].next) == (0, 1)
    assert a.progress["b"].last_ack == 10.5 and a.confirmed_round() >= round_
    assert actions == [StateChanged()]  # the read round it confirmed wakes the readers
    assert a.check_quorum(11.9) == []  # b counts as heard at 10.5
    # The message's answer moves the progress; a heartbeat's arriving after it (it was
    # sent before, with the older progress) does not move it back.
    assert in_flight.args is not None
    a.step_append_reply("b", in_flight, reply_of(b.step_append_entries(in_flight.args, 11)), 11)
    assert (a.progress["b"].match, a.progress["b"].next) == (2, 3)
    a.step_progressless_reply("b", beat, beat_reply.term, 11.1)
    assert (a.progress["b"].match, a.progress["b"].next) == (2, 3)
    # An answer from a newer term deposes the leader, as any answer does.
    a.step_progressless_reply("b", a.heartbeat_message("b", 12.0), a.term + 1, 12.0)
    assert a.role is Role.FOLLOWER


def test_leader_noop_is_appended_in_its_term() -> None:
    config = RaftConfig(election_timeout=(1.0, 2.0), leader_noop=True)
    a, b, c = (make_core(i, config=config) for i in VOTERS)
    elect(a, [b, c], 10.0)
    assert a.log.entries == [Entry(1, NOOP_COMMAND)]
    assert not a.committed_in_term()
    a.persisted(1)
    replicate(a, b, 10.0)
    assert a.commit_index == 1 and a.committed_in_term()
    with pytest.raises(BadRequest):
        a.propose([NOOP_COMMAND])  # reserved


def test_reads_queued_before_a_message_share_its_round() -> None:
    a, b, c = make_core("a"), make_core("b"), make_core("c")
    elect(a, [b, c], 10.0)
    first, second = a.queue_read(), a.queue_read()
    assert first == second == 1
    old = a.replication_message("c", 10.0)  # carries round 1
    third = a.queue_read()  # queued after a round-1 message went out: the next round
    assert third == 2
    assert a.confirmed_round() == 0
    replicate(a, b, 10.0)  # b answers a round-2 message
    assert a.confirmed_round() == 2
    # A reply to a message sent before a read cannot confirm it.
    a2, b2, c2 = make_core("a"), make_core("b"), make_core("c")
    elect(a2, [b2, c2], 10.0)
    early = a2.replication_message("b", 10.0)
    round_ = a2.queue_read()
    reply = reply_of(b2.step_append_entries(early.args, 10.0))
    a2.step_append_reply("b", early, reply, 10.0)
    assert a2.confirmed_round() < round_
    del old


def heartbeat_answered(leader: RaftCore, follower: RaftCore, sent_at: float, now: float) -> None:
    beat = leader.heartbeat_message(follower.id, sent_at)
    assert beat.args is not None
    reply = reply_of(follower.step_append_entries(beat.args, sent_at))
    leader.step_progressless_reply(follower.id, beat, reply.term, now)


def test_a_read_round_goes_to_the_quickest_followers_that_make_a_majority() -> None:
    names = ("a", "b", "c", "d", "e")
    a, *others = (make_core(i, voters=names) for i in names)
    elect(a, others, 10.0)
    assert a.read_round_peers(10.0) == ["b", "c", "d", "e"]  # before any answer: every one
    b, c, d, e = others
    for follower, delay in ((b, 0.004), (c, 0.001), (d, 0.002), (e, 0.003)):
        heartbeat_answered(a, follower, 10.0, 10.0 + delay)
    # Two followers and the leader are a majority of five: the two quickest.
    assert a.read_round_peers(10.01) == ["c", "d"]
    # A follower with a call in flight goes last; ties go by id.
    assert a.read_round_peers(10.01, busy=["c"]) == ["d", "e"]
    heartbeat_answered(a, e, 10.05, 10.051)
    assert a.read_round_peers(10.06) == ["c", "e"]
    # Who has not answered within a heartbeat interval and a half is not asked alone; with
    # too few left, a round goes to every voter.
    heartbeat_answered(a, b, 10.1, 10.11)
    assert a.read_round_peers(10.155) == ["e", "b"]  # c and d answered 0.15 s ago or more
    assert a.read_round_peers(10.3) == ["b", "c", "d", "e"]
    # A learner is never asked, however quick: its answer does not count.
    a, b, c = elected_with_noop_committed(config=replace(NOOP_CONFIG, max_learners=1))
    a.propose_membership_change(MembershipChange(add_learner=("d", "mem://d")))
    d = joining("d")
    a.persisted(2)
    replicate(a, b, 10.1)  # the change commits (a and b)
    for _ in range(3):
        replicate(a, d, 10.2)  # answered at once
    heartbeat_answered(a, b, 10.2, 10.24)
    heartbeat_answered(a, c, 10.2, 10.25)
    assert a.read_round_peers(10.25) == ["b"]


def test_lease_holds_only_within_its_duration_after_a_majority_answered() -> None:
    config = RaftConfig(election_timeout=(1.0, 2.0), leader_noop=True, lease_duration=0.9)
    a, b, c = (make_core(i, config=config) for i in VOTERS)
    elect(a, [b, c], 10.0)
    a.persisted(1)
    assert not a.lease_valid(10.0)  # nothing of its term committed yet
    replicate(a, b, 10.0)  # sent at 10.0, answered: commits the no-op
    assert a.committed_in_term()
    assert a.lease_valid(10.5) and a.lease_valid(10.89)
    assert not a.lease_valid(10.9)
    with pytest.raises(ValueError):
        RaftConfig(election_timeout=(1.0, 2.0), lease_duration=1.0)


@pytest.mark.parametrize(
    ("election_timeout", "heartbeat_interval"),
    [((0.3, 0.6), 0.3), ((0.3, 0.6), 0.0), ((0.6, 0.3), 0.1), ((0.0, 0.6), 0.1)],
)
def test_config_refuses_timings_that_would_elect_under_a_live_leader(
    election_timeout: tuple[float, float], heartbeat_interval: float
) -> None:
    """A heartbeat interval at or past the shortest election timeout (or an empty or
    reversed range) would let followers of a healthy leader campaign."""
    with pytest.raises(ValueError, match="heartbeat_interval"):
        RaftConfig(election_timeout=election_timeout, heartbeat_interval=heartbeat_interval)


def test_leadership_transfer_transcript() -> None:
    a, b, c = make_core("a"), make_core("b"), make_core("c")
    elect(a, [b, c], 10.0)
    a.propose(["x"])
    target, actions = a.start_transfer("b")
    assert target == "b" and not of_type(actions, Send)  # b lacks entry 1
    with pytest.raises(NotLeader):
        a.propose(["y"])  # proposals are refused meanwhile
    leader_actions = replicate(a, b, 10.1)
    (timeout_now,) = of_type(leader_actions, Send)
    assert timeout_now == Send("b", TimeoutNowArgs(1, "a"))
    assert not a.lease_valid(10.1)
    # b campaigns at once, with no pre-vote, and c grants despite just hearing from a.
    replicate(a, c, 10.1)
    campaign = b.step_timeout_now(timeout_now.message, 10.2)
    assert campaign[0] == PersistHardState(2, "b") and b.role is Role.CANDIDATE
    vote = of_type(campaign, Send)[0].message
    assert vote.leadership_transfer and not vote.pre_vote
    to_c = next(s.message for s in of_type(campaign, Send) if s.to == "c")
    assert reply_of(c.step_request_vote(to_c, 10.2)).granted
    # The same request without the flag is refused by a voter that heard its leader.
    a2, b2, c2 = make_core("a"), make_core("b"), make_core("c")
    elect(a2, [b2, c2], 10.0)
    replicate(a2, c2, 10.0)
    plain = RequestVoteArgs(2, "b", 0, 0)
    assert not reply_of(c2.step_request_vote(plain, 10.2)).granted
    # An abandoned transfer lets the leader take proposals again.
    a2.start_transfer("b")
    a2.abandon_transfer()
    assert a2.propose(["z"]) == 1


def test_timeout_now_from_someone_else_is_ignored() -> None:
    b = make_core("b")
    b.step_append_entries(AppendEntriesArgs(1, "a", 0, 0, [], 0), 1.0)
    actions = b.step_timeout_now(TimeoutNowArgs(1, "c"), 1.0)
    assert not of_type(actions, Send) and b.role is Role.FOLLOWER and b.term == 1


# -- membership changes ----------------------------------------------------------------

NOOP_CONFIG = RaftConfig(election_timeout=(1.0, 2.0), heartbeat_interval=0.1, leader_noop=True)


def joining(node_id: str) -> RaftCore:
    """A new node started with an empty data directory: no configuration until the leader's
    log (or snapshot) brings one."""
    core = RaftCore(
        node_id,
        (),
        term=0,
        voted_for=None,
        log=Log(),
        config=NOOP_CONFIG,
        rng=random.Random(node_id),
        configuration=Configuration(()),
    )
    core.reset_election_deadline(0.0)
    return core


def elected_with_noop_committed(
    now: float = 10.0, config: RaftConfig = NOOP_CONFIG
) -> tuple[RaftCore, RaftCore, RaftCore]:
    a, b, c = (make_core(i, config=config) for i in VOTERS)
    elect(a, [b, c], now)
    a.persisted(1)
    replicate(a, b, now)
    replicate(a, c, now)
    assert a.committed_in_term()
    return a, b, c


def test_a_second_membership_change_is_refused_while_one_is_uncommitted() -> None:
    a, b, _c = elected_with_noop_committed()
    index, actions = a.propose_membership_change(MembershipChange(add_learner=("d", "mem://d")))
    assert index == 2 and a.configuration.learners == ("d",)  # in effect at once
    assert of_type(actions, ConfigurationChanged) and "d" in a.progress
    with pytest.raises(MembershipChangeRefused, match="not committed yet"):
        a.propose_membership_change(MembershipChange(remove="c"))
    a.persisted(2)
    replicate(a, b, 10.1)
    assert a.commit_index == 2
    index, _ = a.propose_membership_change(MembershipChange(remove="c"))  # now it may
    assert index == 3 and a.voters == ("a", "b")


def test_a_learner_past_max_learners_is_refused_until_one_is_promoted_or_removed() -> None:
    a, b, _c = elected_with_noop_committed()
    a.propose_membership_change(MembershipChange(add_learner=("d", "mem://d")))
    a.persisted(2)
    replicate(a, b, 10.1)
    assert a.commit_index == 2 and a.config.max_learners == 1
    with pytest.raises(MembershipChangeRefused, match="1 learners already"):
        a.propose_membership_change(MembershipChange(add_learner=("e", "mem://e")))
    with pytest.raises(BadRequest, match="member already"):  # not refused: wrong
        a.propose_membership_change(MembershipChange(add_learner=("d", "mem://d")))
    index, _ = a.propose_membership_change(MembershipChange(remove="d"))
    a.persisted(index)
    replicate(a, b, 10.2)
    index, _ = a.propose_membership_change(MembershipChange(add_learner=("e", "mem://e")))
    assert a.configuration.learners == ("e",)


def test_checking_a_membership_change_changes_nothing() -> None:
    """What ``RaftNode.change_membership`` asks before a leader removing itself hands over:
    the configuration it would make, or the refusal, with the log and peers untouched."""
    a, _b, _c = elected_with_noop_committed()
    last, peers = a.log.last_index, list(a.peers)
    after = a.check_membership_change(MembershipChange(remove="a"))
    assert after.voters == ("b", "c") and a.configuration.voters == ("a", "b", "c")
    assert (a.log.last_index, a.peers) == (last, peers)
    a.propose_membership_change(MembershipChange(add_learner=("d", "mem://d")))
    with pytest.raises(MembershipChangeRefused, match="not committed yet"):
        a.check_membership_change(MembershipChange(remove="a"))


def test_a_leader_without_a_committed_entry_of_its_term_cannot_change_membership() -> None:
    a, b, c = (make_core(i, config=NOOP_CONFIG) for i in VOTERS)
    elect(a, [b, c], 10.0)
    with pytest.raises(MembershipChangeRefused, match="no entry of term 1"):
        a.propose_membership_change(MembershipChange(add_learner=("d", "mem://d")))
    a.persisted(1)
    replicate(a, b, 10.0)  # the no-op commits
    a.propose_membership_change(MembershipChange(add_learner=("d", "mem://d")))
    with pytest.raises(NotLeader):
        b.propose_membership_change(MembershipChange(remove="c"))
    with pytest.raises(BadRequest):
        MembershipChange(remove="c", promote="d")  # one change at a time


def test_only_single_server_changes_apply() -> None:
    a, _b, _c = elected_with_noop_committed()
    for bad in (
        MembershipChange(promote="c"),  # a voter already
        MembershipChange(add_learner=("b", "mem://b")),  # a member already
        MembershipChange(remove="z"),  # not a member
    ):
        with pytest.raises(BadRequest):
            a.propose_membership_change(bad)
    with pytest.raises(BadRequest):
        a.propose(["\x00raft-configuration {}"])  # reserved


def test_a_learner_is_not_asked_to_vote_and_its_ack_does_not_commit() -> None:
    a, b, c = elected_with_noop_committed(config=replace(NOOP_CONFIG, max_learners=2))
    a.propose_membership_change(MembershipChange(add_learner=("d", "mem://d")))
    d = joining("d")
    assert d.voters == () and d.tick(100.0) == []  # nobody to be: it never campaigns
    a.persisted(2)
    replicate(a, b, 10.1)  # the change commits (a and b)
    for _ in range(3):
        replicate(a, d, 10.2)
    assert d.configuration.learners == ("d",) and d.log.last_index == 2
    assert d.tick(100.0) == [] and d.role is Role.FOLLOWER  # a learner never campaigns
    a.propose_membership_change(MembershipChange(add_learner=("e", "mem://e")))
    e = joining("e")
    a.propose(["x"])
    a.persisted(4)
    for _ in range(3):
        replicate(a, d, 10.3)
        replicate(a, e, 10.3)
    # a, d and e hold entry 4: a majority of the members, but not of the voters.
    assert a.progress["d"].match == a.progress["e"].match == 4 and a.commit_index == 2
    replicate(a, c, 10.3)
    assert a.commit_index == 4  # c's ack (a voter's) does
    # Pre-vote and vote requests go to the voters only.
    a.step_newer_term(5)
    sends = a.tick(100.0)
    assert {s.to for s in of_type(sends, Send)} == {"b", "c"}
    # A learner's acknowledgements do not keep a leader in office either.
    a2, b2, _c2 = elected_with_noop_committed(20.0)
    a2.propose_membership_change(MembershipChange(add_learner=("d", "mem://d")))
    a2.persisted(2)
    replicate(a2, b2, 20.1)
    d2 = joining("d")
    replicate(a2, d2, 22.5)
    replicate(a2, d2, 22.5)
    assert StepDown(1) in a2.check_quorum(23.5)


def test_promoting_a_learner_makes_its_ack_count() -> None:
    a, b, _c = elected_with_noop_committed()
    a.propose_membership_change(MembershipChange(add_learner=("d", "mem://d")))
    a.persisted(2)
    replicate(a, b, 10.1)
    index, _ = a.propose_membership_change(MembershipChange(promote="d"))
    assert a.voters == ("a", "b", "c", "d")
    a.persisted(index)
    d = joining("d")
    for _ in range(3):
        replicate(a, d, 10.2)
    assert d.voters == ("a", "b", "c", "d")
    assert a.commit_index == 2  # a and d: 2 of 4 voters
    replicate(a, b, 10.3)
    assert a.commit_index == index  # a, b and d: 3 of 4


def test_a_removed_leader_steps_down_once_its_removal_commits() -> None:
    a, b, c = elected_with_noop_committed()
    index, _ = a.propose_membership_change(MembershipChange(remove="a"))
    assert a.voters == ("b", "c") and a.role is Role.LEADER  # leads until it commits
    a.persisted(index)
    actions = replicate(a, b, 10.1)
    assert a.commit_index == 1 and a.role is Role.LEADER  # a does not count itself: 1 of 2
    assert not of_type(actions, StepDown)
    actions = replicate(a, c, 10.1)
    assert a.commit_index == index
    assert StepDown(1) in actions and a.role is Role.FOLLOWER and a.leader_id is None
    assert a.tick(100.0) == []  # no longer a voter: it never campaigns
    # b and c elect among themselves.
    b.step_append_entries(AppendEntriesArgs(1, "a", index, 1, [], index), 10.2)
    elect(c, [b], 100.0)
    assert c.role is Role.LEADER and c.voters == ("b", "c")


def test_a_removed_follower_is_sent_the_log_until_its_removal_commits() -> None:
    a, b, c = elected_with_noop_committed()
    index, _ = a.propose_membership_change(MembershipChange(remove="c"))
    assert "c" in a.progress and a.peers == ["b", "c"]
    a.persisted(index)
    replicate(a, c, 10.1)  # c learns of its removal (its ack no longer counts)
    assert a.commit_index == 1 and c.voters == ("a", "b")
    assert c.tick(100.0) == []  # removed: it stops campaigning
    actions = replicate(a, b, 10.1)
    assert a.commit_index == index and a.peers == ["b"] and "c" not in a.progress
    assert of_type(actions, ConfigurationChanged)


def test_a_truncated_configuration_entry_reverts_the_configuration() -> None:
    follower = make_core("b", [1])
    added = Configuration(("a", "b", "c"), ("d",), {"d": "mem://d"})
    args = AppendEntriesArgs(1, "a", 1, 1, [Entry(1, encode_configuration(added))], 1)
    actions = follower.step_append_entries(args, 5.0)
    assert follower.configuration == added  # in effect once appended, not yet committed
    assert of_type(actions, ConfigurationChanged) == [ConfigurationChanged(added)]
    assert follower.peers == ["a", "c", "d"]
    # Term 2's leader never had it: the entry is truncated, the old configuration is back.
    fix = AppendEntriesArgs(2, "c", 1, 1, [Entry(2, "y")], 1)
    actions = follower.step_append_entries(fix, 6.0)
    assert follower.configuration == Configuration(("b", "a", "c"))
    assert follower.peers == ["a", "c"] and of_type(actions, ConfigurationChanged)


def test_the_configuration_survives_compaction_and_is_rebuilt_from_the_log() -> None:
    a, b, _c = elected_with_noop_committed()
    a.propose_membership_change(MembershipChange(add_learner=("d", "mem://d")))
    a.propose(["x"])
    log = a.log.copy()
    restarted = RaftCore(
        "a", VOTERS, term=1, voted_for="a", log=log, config=NOOP_CONFIG, rng=random.Random(1)
    )
    assert restarted.configuration == a.configuration and restarted.peers == ["b", "c", "d"]
    assert restarted.configuration_at(1).learners == ()
    a.persisted(3)
    replicate(a, b, 10.1)
    learner_config = a.configuration_at(3)
    a.compact(3)
    assert a.history.base == learner_config and a.configuration.learners == ("d",)


def test_core_imports_neither_trio_nor_the_http_stack() -> None:
    code = (
        "import sys, trioraft.raft.core\n"
        "banned = {'trio', 'httpx', 'hypercorn', 'quart', 'quart_trio', 'anyio'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in banned))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]", result.stdout
