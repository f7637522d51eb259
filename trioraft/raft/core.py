"""The Raft rules as a pure state machine: messages, proposals and time in, actions out.

:class:`RaftCore` holds one member's Raft state (term, vote, role, log, commit index, each
peer's progress) and changes it only in its step functions. Each takes what happened (a
request or a reply from a peer, a tick of the clock, "persisted up to") and the time as a
value (``now``, in seconds), changes the state in memory and returns the :data:`Action`\\ s
its driver must carry out, in order: persist the hard state or the log, save a snapshot,
send a message, reply, start or stop leading, wake whoever waits on the commit index.
Nothing here imports Trio, reads a clock or does I/O (:mod:`trioraft.raft.node` drives it).

    follower / candidate:  step_request_vote, step_append_entries, step_install_snapshot
                           (and step_snapshot_chunk before the last chunk), step_timeout_now,
                           tick (campaign: pre-vote, then vote), step_vote_reply
    leader:                propose, replication_message, step_append_reply,
                           step_snapshot_reply, heartbeat_message, step_progressless_reply
                           (a heartbeat's, or a snapshot chunk's before the last),
                           persisted, check_quorum, read rounds,
                           leadership transfer, propose_membership_change

Invariants:
- Actions are listed in the order they must happen: a ``Reply`` or ``Send`` comes after
  every ``PersistHardState`` / ``PersistLog`` / ``SaveSnapshot`` it depends on. So nothing
  that depends on a change of term, vote or log leaves the node before it is durable.
- At most one leader per term: a vote is granted once per term (``PersistHardState`` first).
- The leader counts itself towards a quorum only up to ``durable_index`` (what its driver
  reported persisted); an entry commits by counting only if it is of the leader's term.
- A reply is only counted if it answers a message of the current term from this leader:
  a stale reply (older term, or from an earlier campaign or leadership) changes nothing.
- The voters are data, not wired in: ``voters`` and ``peers`` follow the latest
  configuration in the log, committed or not (:mod:`trioraft.raft.membership`); a
  truncated configuration entry brings back the one before it.
- Only voters count: a learner is never asked for its vote, and neither its acknowledgements
  nor (for a leader removed from the voters) the leader's own count towards a commit, a read
  round or check-quorum. A node that is not a voter never campaigns.
- One membership change at a time: the leader starts one only once an entry of its term
  has committed and no configuration entry is uncommitted. A leader removed by a change
  replicates until that entry commits, then steps down; a removed follower keeps receiving
  the log until its removal commits (so it learns of it and stops campaigning).
- A read index is released only after a majority (the leader included) acknowledged a
  message sent after the read was queued, in the leader's term, and only once an entry of
  that term has committed.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .._errors import BadRequest, NotLeader
from .config import CAMPAIGN_BACKOFF_CAP, ENTRY_OVERHEAD_BYTES, RaftConfig
from .log import Entry, Log, is_up_to_date, match_append, next_index_after_reject
from .membership import (
    CONFIGURATION_PREFIX,
    Configuration,
    ConfigurationHistory,
    MembershipChange,
    MembershipChangeRefused,
    apply_change,
    decode_configuration,
    encode_configuration,
    settled_in_term,
    uncommitted_change,
)
from .messages import (
    AppendEntriesArgs,
    AppendEntriesReply,
    InstallSnapshotReply,
    RequestVoteArgs,
    RequestVoteReply,
    TimeoutNowArgs,
    TimeoutNowReply,
    command_wire_bytes,
)
from .quorum import committed_index, majority, quorum_index, won

#: The command of a leader's no-op entry (``RaftConfig.leader_noop``): reserved, never
#: proposed by an application and never handed to it.
NOOP_COMMAND = ""


class Role(enum.Enum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"


# -- actions ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PersistHardState:
    term: int
    voted_for: str | None


@dataclass(frozen=True, slots=True)
class PersistLog:
    """Make storage mirror the log (truncated from ``truncate_from`` if set) and durable up
    to ``durable_through``, then report it with :meth:`RaftCore.persisted`."""

    truncate_from: int | None
    durable_through: int


@dataclass(frozen=True, slots=True)
class SaveSnapshot:
    """Save the snapshot the leader sent, up to (``index``, ``term``), with the
    ``configuration`` it carries, durably; then report it with
    :meth:`RaftCore.snapshot_installed`."""

    index: int
    term: int
    configuration: Configuration | None = None


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``message`` to ``to``; its reply goes to the matching step function."""

    to: str
    message: RequestVoteArgs | TimeoutNowArgs


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer the request being stepped with ``message``."""

    message: Any


@dataclass(frozen=True, slots=True)
class BecomeLeader:
    term: int


@dataclass(frozen=True, slots=True)
class StepDown:
    """This node no longer leads ``term``: stop everything the leadership started."""

    term: int


@dataclass(frozen=True, slots=True)
class StateChanged:
    """Term, role, leader, commit index or read rounds moved: wake whoever waits on them."""

    term_changed: bool = False


@dataclass(frozen=True, slots=True)
class LostEntries:
    """``peer`` rejected entries up to ``acknowledged`` that it had acknowledged (its data
    directory was wiped or damaged): it is brought back up from ``resent_from``."""

    peer: str
    acknowledged: int
    resent_from: int


@dataclass(frozen=True, slots=True)
class ConfigurationChanged:
    """The configuration in effect, or the peers this node replicates to, changed: reach
    the members of ``configuration`` at their addresses, and (a leader) replicate to every
    peer the core keeps progress for."""

    configuration: Configuration


Action = (
    PersistHardState
    | PersistLog
    | SaveSnapshot
    | Send
    | Reply
    | BecomeLeader
    | StepDown
    | StateChanged
    | LostEntries
    | ConfigurationChanged
)


# -- leader state ----------------------------------------------------------------------


@dataclass(slots=True)
class Progress:
    """What the leader knows of one follower in its term."""

    next: int
    match: int = 0
    #: When it last answered a message of this term.
    last_ack: float = -math.inf
    #: The latest read round (see :meth:`RaftCore.queue_read`) one of its answers confirmed.
    acked_round: int = 0
    #: When the latest message it answered was sent (lease reads count from there).
    acked_sent_at: float = -math.inf
    #: How long its latest answer took, from the message's sending (read rounds go to the
    #: quickest followers first).
    ack_delay: float = math.inf


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message for one follower, and what its reply must be stepped with."""

    args: AppendEntriesArgs | None  # None: the follower needs the snapshot
    term: int
    read_round: int
    sent_at: float
    #: The entries' size as sent (the call's time bound grows with it).
    entry_bytes: int = 0


@dataclass(slots=True)
class Campaign:
    term: int
    pre_vote: bool
    granted: set[str] = field(default_factory=set)


@dataclass(slots=True)
class Transfer:
    target: str
    timeout_sent: bool = False


class RaftCore:
    """One member's Raft state and rules (see the module docstring)."""

    def __init__(
        self,
        node_id: str,
        voters: Iterable[str],
        *,
        term: int,
        voted_for: str | None,
        log: Log,
        config: RaftConfig,
        rng: random.Random,
        configuration: Configuration | None = None,
    ) -> None:
        """``configuration`` is the one in effect at the log's snapshot index (from the
        snapshot); without one, ``voters`` (this node among them) is."""
        self.id = node_id
        self.history = ConfigurationHistory(
            configuration or Configuration.of_voters([node_id, *voters])
        )
        self.history.appended(log.snapshot_index + 1, log.entries)
        #: The voters of the configuration in effect (this node may not be one).
        self.voters: tuple[str, ...] = ()
        #: The other voters: who is asked for votes and whose acknowledgements count.
        self.voting_peers: list[str] = []
        #: Every other member this node replicates to when it leads (the learners, and a
        #: member whose removal has not committed yet, included).
        self.peers: list[str] = []
        self.config = config
        self._rng = rng
        self.term = term
        self.voted_for = voted_for
        self.log = log
        self.role = Role.FOLLOWER
        self.leader_id: str | None = None
        self.commit_index = log.snapshot_index
        #: What this node's storage holds durably (the driver reports it).
        self.durable_index = log.last_index
        self.progress: dict[str, Progress] = {}
        self.campaign: Campaign | None = None
        self.transfer: Transfer | None = None
        #: A TimeoutNow went out in this term: lease reads are over for it.
        self._handed_over_term = -1
        self.read_round = 0  # the round the next message carries; see queue_read
        self._round_sent = True  # whether a message of ``read_round`` went out
        self.last_leader_contact = -math.inf
        #: When a follower or candidate campaigns (by :meth:`tick`); set by the first
        #: :meth:`reset_election_deadline`.
        self.election_deadline = math.inf
        #: Campaigns since this node last heard from a leader or led (see campaign_now).
        self.campaigns_in_a_row = 0
        self._configuration_moved()

    # -- membership ----------------------------------------------------------------------

    @property
    def configuration(self) -> Configuration:
        """The configuration in effect: the latest in the log, committed or not."""
        return self.history.latest

    @property
    def is_voter(self) -> bool:
        return self.id in self.voters

    def configuration_at(self, index: int) -> Configuration:
        """The configuration in effect once the log up to ``index`` is applied."""
        return self.history.at(index)

    def _configuration_moved(self) -> list[Action]:
        """Follow the history: voters, peers and (leading) progress; an action for the
        driver if any of them changed."""
        latest = self.history.latest
        members = dict.fromkeys(latest.members)
        if self.role is Role.LEADER:
            # A removed member is still sent the log until its removal commits.
            members.update(dict.fromkeys(self.history.at(self.commit_index).members))
        peers = [p for p in members if p != self.id]
        before = (self.voters, self.peers)
        self.voters = latest.voters
        self.voting_peers = [p for p in latest.voters if p != self.id]
        self.peers = peers
        if self.role is Role.LEADER:
            for peer in peers:
                if peer not in self.progress:
                    self.progress[peer] = Progress(self.log.last_index + 1)
            for peer in [p for p in self.progress if p not in peers]:
                del self.progress[peer]
        if (self.voters, self.peers) == before:
            return []
        return [ConfigurationChanged(latest)]

    def _voter_progress(self) -> list[Progress]:
        return [self.progress[p] for p in self.voting_peers if p in self.progress]

    def propose_membership_change(self, change: MembershipChange) -> tuple[int, list[Action]]:
        """Append the configuration entry for ``change`` (a single-server change, Raft
        thesis §4.1); its index, and the actions. The new configuration is in effect at once.
        Raises as :meth:`check_membership_change`."""
        new = self.check_membership_change(change)
        index = self.log.last_index + 1
        entry = Entry(self.term, encode_configuration(new))
        self.log.append([entry])
        self.history.appended(index, [entry])
        return index, [*self._configuration_moved(), *self._advance_commit()]

    def term_settled(self) -> bool:
        """Whether this leader may start a membership change as far as its term goes (see
        :func:`~trioraft.raft.membership.settled_in_term`)."""
        return settled_in_term(self.log.term_at(self.commit_index), self.term)

    def check_membership_change(self, change: MembershipChange) -> Configuration:
        """The configuration ``change`` would make now, changing nothing.

        Refused (:class:`MembershipChangeRefused`) while another change is uncommitted,
        before an entry of this leader's term has committed, during a leadership transfer,
        or adding a learner past ``max_learners``; :class:`NotLeader` off the leader;
        ``BadRequest`` if it does not apply."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id)
        if self.transfer is not None:
            raise MembershipChangeRefused("leadership is being transferred; retry after")
        pending = uncommitted_change(self.history, self.commit_index)
        if pending:
            raise MembershipChangeRefused(
                f"another membership change (entry {pending}) is not committed yet"
            )
        if not self.term_settled():
            raise MembershipChangeRefused(
                f"no entry of term {self.term} has committed yet (a new leader must "
                "commit one before it changes the membership)"
            )
        latest = self.history.latest
        adding = change.add_learner
        learners = len(latest.learners)
        # (Adding a member twice is apply_change's error, not a refusal.)
        if adding and adding[0] not in latest.members and learners >= self.config.max_learners:
            raise MembershipChangeRefused(
                f"{learners} learners already (at most {self.config.max_learners}): "
                "promote or remove one first"
            )
        return apply_change(latest, change)

    # -- shared rules --------------------------------------------------------------------

    def reset_election_deadline(self, now: float) -> None:
        self.election_deadline = now + self._rng.uniform(*self.config.election_timeout)

    def heard_from_leader(self, now: float) -> None:
        """A valid message from the current leader arrived (or was just dealt with)."""
        self.last_leader_contact = now
        self.campaigns_in_a_row = 0
        self.reset_election_deadline(now)

    def _leader_recently_heard(self, now: float) -> bool:
        if self.role is Role.LEADER:
            return True
        elapsed = now - self.last_leader_contact
        return self.leader_id is not None and elapsed < self.config.election_timeout[0]

    def _become_follower(self, term: int, leader: str | None) -> list[Action]:
        """Adopt ``term`` (a newer one clears the vote) and follow ``leader``."""
        actions: list[Action] = []
        old_term = self.term
        term_changed = term > self.term
        if term_changed:
            self.term, self.voted_for = term, None
            actions.append(PersistHardState(self.term, None))
        if self.role is Role.LEADER:
            actions.append(StepDown(old_term))
            self.progress = {}
            self.transfer = None
        before = (self.role, self.leader_id)
        self.role = Role.FOLLOWER
        self.campaign = None
        if leader is not None or term_changed:
            self.leader_id = leader
        if term_changed or before != (self.role, self.leader_id):
            actions.append(StateChanged(term_changed))
        return actions

    def _leads(self, term: int) -> bool:
        return self.role is Role.LEADER and self.term == term

    # -- elections -----------------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        """The election deadline may have passed: a follower or candidate campaigns."""
        if now < self.election_deadline:
            return []
        if self.role is Role.LEADER:
            self.reset_election_deadline(now)
            return []
        return self.campaign_now(now, leadership_transfer=False)

    def campaign_now(self, now: float, *, leadership_transfer: bool) -> list[Action]:
        """Stand for election: a pre-vote first (unless configured off or asked by the
        leader), then a real vote, whose replies count until the next campaign is due: a
        random election timeout from now, doubled for each campaign in a row before this
        one, at most :data:`~trioraft.raft.config.CAMPAIGN_BACKOFF_CAP` times (hearing from
        a leader, or leading, starts over). In a process short of CPU, replies can take
        longer than any fixed timeout; were every node to campaign again at once, their
        vote requests alone would keep the calls that slow, and the cluster leaderless.
        A node that is not a voter (a learner, a removed or a joining node) never campaigns."""
        if not self.is_voter:
            self.reset_election_deadline(now)
            return []
        factor = min(2**self.campaigns_in_a_row, CAMPAIGN_BACKOFF_CAP)
        self.campaigns_in_a_row += 1
        self.election_deadline = now + self._rng.uniform(*self.config.election_timeout) * factor
        if not self.config.pre_vote or leadership_transfer:
            return self._start_election(now, leadership_transfer)
        self.campaign = Campaign(self.term + 1, pre_vote=True, granted={self.id})
        if won(1, len(self.voters)):
            return self._start_election(now, False)
        return self._ask_votes(pre_vote=True, leadership_transfer=False)

    def _start_election(self, now: float, leadership_transfer: bool) -> list[Action]:
        self.term, self.voted_for = self.term + 1, self.id
        self.role = Role.CANDIDATE
        self.leader_id = None
        self.campaign = Campaign(self.term, pre_vote=False, granted={self.id})
        actions: list[Action] = [PersistHardState(self.term, self.id), StateChanged(True)]
        if won(1, len(self.voters)):
            return actions + self._become_leader(now)
        return actions + self._ask_votes(pre_vote=False, leadership_transfer=leadership_transfer)

    def _ask_votes(self, *, pre_vote: bool, leadership_transfer: bool) -> list[Action]:
        assert self.campaign is not None
        args = RequestVoteArgs(
            self.campaign.term,
            self.id,
            self.log.last_index,
            self.log.last_term,
            pre_vote,
            leadership_transfer,
        )
        return [Send(peer, args) for peer in self.voting_peers]

    def step_newer_term(self, term: int) -> list[Action]:
        """A reply carried ``term``: if newer, adopt it and follow (nobody, yet)."""
        if term <= self.term:
            return []
        return self._become_follower(term, None)

    def step_vote_reply(
        self, peer: str, args: RequestVoteArgs, reply: RequestVoteReply, now: float
    ) -> list[Action]:
        """A peer answered our (pre-)vote request ``args``."""
        if reply.term > self.term:
            return self.step_newer_term(reply.term)
        campaign = self.campaign
        if (
            campaign is None
            or not reply.granted
            or peer not in self.voters
            or (campaign.term, campaign.pre_vote) != (args.term, args.pre_vote)
        ):
            return []  # refused, or an answer to a campaign that is over
        campaign.granted.add(peer)
        if not won(len(campaign.granted), len(self.voters)):
            return []
        if campaign.pre_vote:
            return self._start_election(now, False)
        return self._become_leader(now)

    def step_request_vote(self, args: RequestVoteArgs, now: float) -> list[Action]:
        """The RequestVote receiver rules (with pre-vote and leader stickiness)."""
        up_to_date = is_up_to_date(
            args.last_log_index, args.last_log_term, self.log.last_index, self.log.last_term
        )
        if args.pre_vote:
            grant = args.term > self.term and up_to_date and not self._leader_recently_heard(now)
            return [Reply(RequestVoteReply(self.term, grant))]
        if args.term < self.term:
            return [Reply(RequestVoteReply(self.term, False))]
        if (
            args.term > self.term
            and self.config.check_quorum
            and not args.leadership_transfer
            and self._leader_recently_heard(now)
        ):
            return [Reply(RequestVoteReply(self.term, False))]  # our leader is alive
        actions = self._become_follower(args.term, None) if args.term > self.term else []
        grant = up_to_date and self.voted_for in (None, args.candidate)
        if grant and self.voted_for is None:
            self.voted_for = args.candidate
            actions = [a for a in actions if not isinstance(a, PersistHardState)]
            actions.insert(0, PersistHardState(self.term, self.voted_for))
        if grant:
            self.reset_election_deadline(now)
        return [*actions, Reply(RequestVoteReply(self.term, grant))]

    def step_timeout_now(self, args: TimeoutNowArgs, now: float) -> list[Action]:
        """The leader hands its leadership to us: campaign at once, without pre-vote."""
        if args.leader == self.id:
            raise BadRequest("leader: a peer cannot speak for this node")
        if args.term != self.term or self.leader_id != args.leader or self.role is Role.LEADER:
            return [Reply(TimeoutNowReply(self.term))]  # not from our current leader
        actions = self.campaign_now(now, leadership_transfer=True)
        return [*actions, Reply(TimeoutNowReply(args.term))]

    # -- following -----------------------------------------------------------------------

    def step_append_entries(self, args: AppendEntriesArgs, now: float) -> list[Action]:
        """The AppendEntries receiver rules (Raft §5.3) with the fast back-up hint."""
        _check_entries(args)
        if args.leader == self.id:
            raise BadRequest("leader: a peer cannot speak for this node")
        if args.term < self.term:
            return [Reply(AppendEntriesReply(self.term, False))]
        result = match_append(self.log, args.prev_log_index, args.prev_log_term, args.entries)
        if result.truncate_from is not None and result.truncate_from <= self.commit_index:
            raise BadRequest("AppendEntries would remove committed entries")  # changes nothing
        actions = self._become_follower(args.term, args.leader)
        self.heard_from_leader(now)
        if not result.success:
            # Storage must still mirror the log (a deposed leader's unwritten proposals).
            actions.append(PersistLog(None, 0))
            reply = AppendEntriesReply(
                self.term, False, 0, result.conflict_term, result.conflict_index
            )
            return [*actions, Reply(reply)]
        membership_moved = False
        if result.truncate_from is not None:
            self.log.truncate_from(result.truncate_from)
            self.durable_index = min(self.durable_index, result.truncate_from - 1)
            membership_moved = self.history.truncated(result.truncate_from)
        if result.new_entries:
            first = self.log.last_index + 1
            self.log.append(list(result.new_entries))
            membership_moved |= self.history.appended(first, result.new_entries)
        if membership_moved:
            actions += self._configuration_moved()
        actions.append(PersistLog(result.truncate_from, result.match_index))
        new_commit = min(args.leader_commit, result.match_index)
        if new_commit > self.commit_index:
            self.commit_index = new_commit
            actions.append(StateChanged())
        return [*actions, Reply(AppendEntriesReply(self.term, True, result.match_index))]

    def step_install_snapshot(
        self,
        term: int,
        leader: str,
        index: int,
        snapshot_term: int,
        now: float,
        configuration: Configuration | None = None,
    ) -> list[Action]:
        """The InstallSnapshot receiver rules (the data was checked by the driver)."""
        actions = self._from_snapshot_sender(term, leader, now)
        if actions is None:
            return [Reply(InstallSnapshotReply(self.term, installed=False))]
        if index > self.commit_index:
            actions.append(SaveSnapshot(index, snapshot_term, configuration))
        return [*actions, Reply(InstallSnapshotReply(self.term))]

    def step_snapshot_chunk(self, term: int, leader: str, now: float) -> list[Action]:
        """A chunk of a snapshot that is not complete yet (the driver keeps the chunks):
        the same term and leader rules as a whole InstallSnapshot, and contact from the
        leader, without installing anything. The reply carries the term."""
        actions = self._from_snapshot_sender(term, leader, now) or []
        return [*actions, Reply(InstallSnapshotReply(self.term, installed=False))]

    def _from_snapshot_sender(self, term: int, leader: str, now: float) -> list[Action] | None:
        """The rules every InstallSnapshot message (chunk or whole) follows: ``None`` if it
        is from an older term, else what hearing from ``term``'s leader ``leader`` takes."""
        if leader == self.id:
            raise BadRequest("leader: a peer cannot speak for this node")
        if term < self.term:
            return None
        actions = self._become_follower(term, leader)
        self.heard_from_leader(now)
        return actions

    def snapshot_installed(
        self, index: int, term: int, configuration: Configuration | None = None
    ) -> list[Action]:
        """The snapshot of a ``SaveSnapshot`` is durable: the log, commit index and
        configuration follow (``configuration``: the snapshot's, if it carries one)."""
        self.log.compact(index, term)
        self.history.compacted(index, configuration)
        self.history.truncated(self.log.last_index + 1)  # the log may have been replaced
        self.durable_index = self.log.last_index
        self.commit_index = max(self.commit_index, index)
        return [*self._configuration_moved(), StateChanged()]

    def compact(self, index: int) -> int:
        """The application's snapshot covers the log up to ``index``: drop it; its term.
        (Take :meth:`configuration_at` ``index`` first: the snapshot must keep it.)"""
        term = self.log.term_at(index)
        assert term is not None
        self.log.compact(index, term)
        self.history.compacted(index)
        return term

    def persisted(self, index: int) -> list[Action]:
        """The log is durable up to ``index``: the leader may count itself up to there."""
        self.durable_index = max(self.durable_index, min(index, self.log.last_index))
        return self._advance_commit()

    # -- leading -------------------------------------------------------------------------

    def _become_leader(self, now: float) -> list[Action]:
        self.campaigns_in_a_row = 0
        self.role = Role.LEADER
        self.leader_id = self.id
        self.campaign = None
        self.transfer = None
        self.progress = {
            peer: Progress(self.log.last_index + 1, last_ack=now) for peer in self.peers
        }
        self._configuration_moved()  # peers whose removal is not committed yet, too
        self.read_round, self._round_sent = 0, True
        if self.config.leader_noop:
            self.log.append([Entry(self.term, NOOP_COMMAND)])
        return [
            BecomeLeader(self.term),
            ConfigurationChanged(self.configuration),
            StateChanged(),
            *self._advance_commit(),
        ]

    def propose(self, commands: list[str]) -> int:
        """Append ``commands`` to the leader's log; the index of the first."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id)
        if self.transfer is not None:
            raise NotLeader(None)  # leadership is moving: retry with the next leader
        if NOOP_COMMAND in commands:
            raise BadRequest("an empty command is reserved for the leader's no-op")
        if any(c.startswith(CONFIGURATION_PREFIX) for c in commands):
            raise BadRequest("a command starting with NUL is reserved for configurations")
        first = self.log.last_index + 1
        self.log.append([Entry(self.term, c) for c in commands])
        return first

    def replication_message(self, peer: str, now: float) -> Outgoing:
        """What to send ``peer`` next: the entries it lacks (as many as fit a batch), a
        heartbeat, or (``args`` None) the snapshot."""
        progress = self.progress[peer]
        self._round_sent = True
        if progress.next <= self.log.snapshot_index:
            return Outgoing(None, self.term, self.read_round, now)
        return self._append_message(progress.next - 1, *self._batch(progress.next), now)

    def heartbeat_message(self, peer: str, now: float) -> Outgoing:
        """A heartbeat for ``peer`` sent beside the replication message still in flight
        (one lost holds its sender for the call's timeout). Only its sender's term and the
        time it was sent count in its reply (see :meth:`step_progressless_reply`)."""
        self._round_sent = True
        prev_index = max(self.progress[peer].next - 1, self.log.snapshot_index)
        return self._append_message(prev_index, [], 0, now)

    def _append_message(
        self, prev_index: int, entries: list[Entry], entry_bytes: int, now: float
    ) -> Outgoing:
        prev_term = self.log.term_at(prev_index)
        assert prev_term is not None
        args = AppendEntriesArgs(
            self.term, self.id, prev_index, prev_term, entries, self.commit_index
        )
        return Outgoing(args, self.term, self.read_round, now, entry_bytes)

    def _batch(self, start: int) -> tuple[list[Entry], int]:
        """Entries from ``start``, as many as fit in ``max_batch_bytes`` as sent (at least
        one, which fits a message: the driver's ``submit`` saw to that), and their size."""
        entries = self.log.entries
        first = start - self.log.snapshot_index - 1
        limit = min(self.config.max_batch_bytes, self.config.max_command_bytes)
        size = 0
        end = first
        while end < len(entries):
            entry_bytes = command_wire_bytes(entries[end].command) + ENTRY_OVERHEAD_BYTES
            if end > first and size + entry_bytes > limit:
                break
            size += entry_bytes
            end += 1
        return entries[first:end], size

    def _acknowledged(self, peer: str, sent: Outgoing, now: float) -> Progress:
        progress = self.progress[peer]
        progress.last_ack = now
        progress.acked_sent_at = max(progress.acked_sent_at, sent.sent_at)
        progress.ack_delay = now - sent.sent_at
        if sent.read_round > progress.acked_round:
            progress.acked_round = sent.read_round
        return progress

    def _on_reply(
        self,
        peer: str,
        sent: Outgoing,
        reply_term: int,
        now: float,
        moves: Callable[[Progress], list[Action]] | None = None,
    ) -> list[Action]:
        """What every reply to this leader does. A newer term deposes it; a stale reply
        (from an earlier term or leadership, or a removed peer) changes nothing. Otherwise
        the peer is alive and follows this leader (check-quorum, read rounds, the lease),
        ``moves`` applies what the reply says of its progress, and a read round it
        confirmed wakes the readers."""
        if reply_term > self.term:
            return self.step_newer_term(reply_term)
        if not self._leads(sent.term) or reply_term != sent.term or peer not in self.progress:
            return []
        before_round = self.confirmed_round()
        progress = self._acknowledged(peer, sent, now)
        actions = [] if moves is None else moves(progress)
        if self.confirmed_round() > before_round:
            actions.append(StateChanged())
        return actions

    def step_append_reply(
        self, peer: str, sent: Outgoing, reply: AppendEntriesReply, now: float
    ) -> list[Action]:
        """A follower answered the AppendEntries ``sent``."""
        args = sent.args
        assert args is not None

        def moves(progress: Progress) -> list[Action]:
            actions: list[Action] = []
            if reply.success:
                match = min(reply.match_index, args.prev_log_index + len(args.entries))
                if match > progress.match:
                    progress.match = match
                    actions += self._advance_commit()
                progress.next = max(progress.next, progress.match + 1)
            else:
                hint = next_index_after_reject(self.log, reply.conflict_term, reply.conflict_index)
                if hint <= progress.match:
                    # A follower never rejects below what it acknowledged unless it lost it
                    # (its data directory wiped or damaged by hand): count it as holding
                    # nothing.
                    actions.append(LostEntries(peer, progress.match, hint))
                    progress.match = 0
                progress.next = max(progress.match + 1, min(hint, self.log.last_index + 1))
            return actions + self._maybe_timeout_now(peer)

        return self._on_reply(peer, sent, reply.term, now, moves)

    def step_snapshot_reply(
        self, peer: str, sent: Outgoing, index: int, reply: InstallSnapshotReply, now: float
    ) -> list[Action]:
        """A follower answered an InstallSnapshot up to ``index`` sent as ``sent``."""

        def moves(progress: Progress) -> list[Action]:
            progress.match = max(progress.match, index)
            progress.next = max(progress.next, index + 1)
            return self._advance_commit()

        return self._on_reply(peer, sent, reply.term, now, moves)

    def step_progressless_reply(
        self, peer: str, sent: Outgoing, reply_term: int, now: float
    ) -> list[Action]:
        """A follower answered ``sent``, a message that moves no progress: a chunk of a
        snapshot (before the last), or a heartbeat sent beside the replication message in
        flight (whose answer it may overtake: only that one moves ``next`` and ``match``)."""
        return self._on_reply(peer, sent, reply_term, now)

    def _advance_commit(self) -> list[Action]:
        if self.role is not Role.LEADER:
            return []
        matches = [p.match for p in self._voter_progress()]
        if self.is_voter:
            matches.append(self.durable_index)
        if not matches:
            return []
        new = committed_index(matches, self.log.term_at, self.term, self.commit_index)
        if new <= self.commit_index:
            return []
        old, self.commit_index = self.commit_index, new
        actions: list[Action] = [StateChanged()]
        if any(old < index <= new for index, _ in self.history.changes):
            # A configuration committed: members it removed are sent the log no more.
            actions = [*self._configuration_moved(), *actions]
        if not self.is_voter and self.history.latest_index <= new:
            # Our own removal committed: lead no more (the others elect among themselves).
            actions += self._become_follower(self.term, None)
            self.leader_id = None
        return actions

    def check_quorum(self, now: float) -> list[Action]:
        """A leader that a majority has not answered for an election timeout steps down."""
        if self.role is not Role.LEADER:
            return []
        timeout = self.config.election_timeout[1]
        recent = int(self.is_voter)
        recent += sum(1 for p in self._voter_progress() if now - p.last_ack < timeout)
        if won(recent, len(self.voters)):
            return []
        actions = self._become_follower(self.term, None)
        self.leader_id = None
        return actions

    def followers_quorum_index(self) -> int:
        """The highest index that the followers alone hold on a majority of the voters."""
        leader = [0] if self.is_voter else []
        return quorum_index([*leader, *(p.match for p in self._voter_progress())])

    def followers_form_quorum(self, now: float, window: float) -> bool:
        """Whether enough followers answered within ``window`` and are caught up to the
        commit index to commit without the leader."""
        recent = now - window
        caught_up = sum(
            1
            for p in self._voter_progress()
            if p.last_ack > recent and p.match >= self.commit_index
        )
        return won(caught_up, len(self.voters))

    def leader_contact_age(self, now: float) -> float:
        """Seconds since this node last had word of a live leader: on a follower, since the
        last valid message from its term's leader (``inf`` if it knows none); on a leader,
        since a majority of the voters, itself included, last answered it."""
        if self.role is Role.LEADER:
            # followers that make a majority (with us, if we vote)
            needed = majority(len(self.voters)) - int(self.is_voter)
            if needed <= 0:
                return 0.0
            acks = sorted((p.last_ack for p in self._voter_progress()), reverse=True)
            return now - acks[needed - 1] if len(acks) >= needed else math.inf
        if self.leader_id is None:
            return math.inf
        return now - self.last_leader_contact

    # -- reads ---------------------------------------------------------------------------

    def committed_in_term(self) -> bool:
        """Whether an entry of the leader's term has committed (its commit index is then at
        least every index any earlier leader committed)."""
        return self.role is Role.LEADER and self.log.term_at(self.commit_index) == self.term

    def queue_read(self) -> int:
        """Queue a read: the round whose confirmation releases it. Reads queued before a
        message of the newest round went out share it; later ones start the next."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id)
        if self._round_sent:
            self.read_round += 1
            self._round_sent = False
        return self.read_round

    def confirmed_round(self) -> int:
        """The newest read round a majority of the voters (the leader included) answered."""
        if self.role is not Role.LEADER:
            return 0
        leader = [self.read_round] if self.is_voter else []
        return quorum_index([*leader, *(p.acked_round for p in self._voter_progress())])

    def read_round_peers(self, now: float, busy: Iterable[str] = ()) -> list[str]:
        """The followers a read round should be sent to: as few as make a majority with the
        leader, the quickest to answer first (a follower in ``busy``, whose replicator has a
        call in flight, last); every voting follower if too few have answered in this term
        and within a heartbeat interval and a half. A round sent to fewer followers than it
        needs is only slower (whoever gets its messages later confirms it), never wrong:
        its confirmation still counts a majority's answers (:meth:`confirmed_round`)."""
        voters = [p for p in self.voting_peers if p in self.progress]
        leader_votes = 1 if self.is_voter else 0
        needed = majority(len(voters) + leader_votes) - leader_votes
        recent = now - 1.5 * self.config.heartbeat_interval
        answering = [
            p
            for p in voters
            if self.progress[p].last_ack >= recent and self.progress[p].ack_delay < math.inf
        ]
        if len(answering) < needed:
            return voters
        waiting = set(busy)
        answering.sort(key=lambda p: (p in waiting, self.progress[p].ack_delay, p))
        return answering[:needed]

    def lease_valid(self, now: float) -> bool:
        """Whether the leader holds a lease: a majority acknowledged a message it sent less
        than ``lease_duration`` ago, and it handed no leadership over in this term."""
        duration = self.config.lease_duration
        if duration is None or not self.committed_in_term() or self.transfer is not None:
            return False
        if self._handed_over_term == self.term:
            return False
        leader = [math.inf] if self.is_voter else []
        sent = quorum_index([*leader, *(p.acked_sent_at for p in self._voter_progress())])
        return now < sent + duration

    # -- leadership transfer -------------------------------------------------------------

    def start_transfer(self, to: str | None) -> tuple[str, list[Action]]:
        """Hand leadership to ``to`` (or the most caught-up follower): proposals are
        refused from now on; the target is told to campaign once it holds the whole log."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id)
        if not self.voting_peers:
            raise BadRequest("to: a one-node cluster has nobody to hand leadership to")
        if self.transfer is not None:
            raise NotLeader(None)  # a transfer is under way already
        if to is None:
            to = max(sorted(self.voting_peers), key=lambda p: self.progress[p].match)
        elif to not in self.voting_peers:
            raise BadRequest(f"to: {to!r} is not another voter of this cluster")
        self.transfer = Transfer(to)
        return to, [StateChanged(), *self._maybe_timeout_now(to)]

    def abandon_transfer(self) -> list[Action]:
        """The transfer did not complete in time: take proposals again."""
        if self.transfer is None:
            return []
        self.transfer = None
        return [StateChanged()]

    def _maybe_timeout_now(self, peer: str) -> list[Action]:
        transfer = self.transfer
        if (
            transfer is None
            or transfer.target != peer
            or transfer.timeout_sent
            or self.progress[peer].match < self.log.last_index
        ):
            return []
        transfer.timeout_sent = True
        self._handed_over_term = self.term
        return [Send(peer, TimeoutNowArgs(self.term, self.id))]


def _check_entries(args: AppendEntriesArgs) -> None:
    """Entries a leader sends have terms from ``prev_log_term`` up to its own, in order,
    and its configuration entries decode: checked before anything changes (an entry in the
    log that the configuration history could not take would split the two)."""
    previous = args.prev_log_term
    for i, entry in enumerate(args.entries):
        if not previous <= entry.term <= args.term:
            raise BadRequest(
                f"entries[{i}].term: {entry.term} breaks the order "
                f"(after term {previous}, in a term-{args.term} message)"
            )
        previous = entry.term
        if entry.command.startswith(CONFIGURATION_PREFIX):
            try:
                decode_configuration(entry.command)
            except ValueError as exc:
                raise BadRequest(f"entries[{i}].command: not a configuration ({exc})") from None
