"""Raft's peer RPCs as frozen dataclasses (validated by the codec like every message).

``request_vote`` also carries pre-votes (``pre_vote=True``): a pre-vote asks "would you vote
for me at ``term``?" without anyone changing their term. A campaign a leader asked for
(``timeout_now``, a leadership transfer) sets ``leadership_transfer``: voters grant it even
though they heard from their leader lately. Snapshot data travels as base64.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..rpc.codec import non_negative
from .log import Entry


@dataclass(frozen=True, slots=True)
class RequestVoteArgs:
    term: int = non_negative()
    candidate: str
    last_log_index: int = non_negative()
    last_log_term: int = non_negative()
    pre_vote: bool = False
    leadership_transfer: bool = False


@dataclass(frozen=True, slots=True)
class RequestVoteReply:
    term: int
    granted: bool


@dataclass(frozen=True, slots=True)
class AppendEntriesArgs:
    term: int = non_negative()
    leader: str
    prev_log_index: int = non_negative()
    prev_log_term: int = non_negative()
    entries: list[Entry]
    leader_commit: int = non_negative()


@dataclass(frozen=True, slots=True)
class AppendEntriesReply:
    term: int
    success: bool
    match_index: int = 0
    conflict_term: int = 0
    conflict_index: int = 0


@dataclass(frozen=True, slots=True)
class InstallSnapshotArgs:
    term: int = non_negative()
    leader: str
    last_included_index: int = non_negative()
    last_included_term: int = non_negative()
    data: str  # base64
    crc32: int = non_negative()  # of the decoded data: checked before anything is saved
    #: The cluster configuration as of ``last_included_index``, as JSON (see
    #: :class:`~trioraft.raft.membership.Configuration`); "" if the snapshot has none.
    configuration: str = ""


@dataclass(frozen=True, slots=True)
class InstallSnapshotReply:
    term: int


@dataclass(frozen=True, slots=True)
class TimeoutNowArgs:
    """The leader of ``term`` hands its leadership over: campaign at once, without pre-vote."""

    term: int = non_negative()
    leader: str


@dataclass(frozen=True, slots=True)
class TimeoutNowReply:
    term: int


def command_wire_bytes(command: str) -> int:
    """The bytes ``command`` takes as a JSON string in a message (quotes included).

    Exact, and cheap for what the replicated state machine logs (printable ASCII JSON,
    where only ``"`` and backslash are escaped); anything else is encoded to be measured.
    """
    if command.isascii() and command.isprintable():
        return len(command) + command.count('"') + command.count("\\") + 2
    return len(json.dumps(command))
