"""Raft's peer RPCs as frozen dataclasses (validated by the codec like every message).

``request_vote`` also carries pre-votes (``pre_vote=True``): a pre-vote asks "would you vote
for me at ``term``?" without anyone changing their term. A campaign a leader asked for
(``timeout_now``, a leadership transfer) sets ``leadership_transfer``: voters grant it even
though they heard from their leader lately.

``install_snapshot`` carries the snapshot in chunks (see :mod:`trioraft.raft.transfer`):
each holds ``chunk`` (base64) from byte ``offset`` of a snapshot of ``total`` bytes whose
SHA-256 is ``sha256``; ``done`` marks the last. The reply says whether the follower holds
the snapshot now (``installed``), else from which byte it wants the next chunk
(``next_offset``: 0 to start again).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..rpc.codec import json_string_bytes, non_negative
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
    #: This chunk's bytes, base64. (Named apart from the one-message format's ``data``,
    #: so that a member still on that format refuses a chunk instead of taking it whole.)
    chunk: str
    crc32: int = non_negative()  # of this chunk's decoded bytes: checked before it is kept
    #: The cluster configuration as of ``last_included_index``, as JSON (see
    #: :class:`~trioraft.raft.membership.Configuration`); "" if the snapshot has none.
    configuration: str = ""
    #: Where this chunk starts in the snapshot, and the snapshot's size in bytes.
    offset: int = non_negative(0)
    total: int = non_negative(0)
    #: The SHA-256 of the whole snapshot (hex): checked once every chunk is in.
    sha256: str = ""
    #: This is the last chunk: ``offset`` plus its length is ``total``.
    done: bool = True


@dataclass(frozen=True, slots=True)
class InstallSnapshotReply:
    term: int
    #: The follower holds the snapshot (or a later state): nothing more to send.
    installed: bool = True
    #: Not installed: the offset of the chunk the follower wants next (0: start again).
    next_offset: int = 0


@dataclass(frozen=True, slots=True)
class TimeoutNowArgs:
    """The leader of ``term`` hands its leadership over: campaign at once, without pre-vote."""

    term: int = non_negative()
    leader: str


@dataclass(frozen=True, slots=True)
class TimeoutNowReply:
    term: int


def command_wire_bytes(command: str) -> int:
    """The bytes ``command`` takes as a JSON string in a message (quotes included)."""
    return json_string_bytes(command) + 2
