"""The exception tree of trioraft: each class says whose fault a failure is.

TrioRaftError
├── KVError                  a KV operation answered something other than OK
│   ├── KeyNotFound          put named version > 0 of a key that does not exist ("NoKey")
│   ├── VersionConflict      put named a version that is not the key's current one ("Version")
│   ├── MaybeApplied         a *retried* put answered "Version" or "NoKey": it may or may not
│   │                        have applied ("Maybe"; never sent on the wire)
│   ├── SessionExpired       an append's client session was evicted: a retry could apply
│   │                        twice, so it is refused ("SessionExpired")
│   ├── NoSpace              the storage quota is used up: writes are refused ("NoSpace")
│   └── LeaseNotFound        the lease expired or was revoked ("NoLease")
├── RaftError                a proposal's fate could not be seen on this node
│   ├── NotLeader            this node does not lead
│   ├── LeadershipLost       leadership changed (or the node stopped) first
│   └── ProposalTimedOut     no result within the operation timeout
├── BadRequest               input failed validation (the caller's fault; a 4xx on the wire)
├── StorageCorrupt           bytes on disk fail their checksum or framing, or the data files
│                            contradict each other: the node refuses to start
├── StorageFailed            a write or fsync failed: the node stops (fail-stop)
└── DataDirectoryConflict    the data directory is in use by another process, or belongs
                             to another node: the node refuses to start
"""

from __future__ import annotations


class TrioRaftError(Exception):
    """Base class of every error trioraft raises on purpose."""


class KVError(TrioRaftError):
    """A KV operation did not answer OK. ``wire`` is the protocol's error string."""

    wire: str = ""


class KeyNotFound(KVError):
    """A put named a version greater than 0 for a key that does not exist."""

    wire = "NoKey"


class VersionConflict(KVError):
    """A put named a version different from the key's current version."""

    wire = "Version"


class MaybeApplied(KVError):
    """A retried put answered ``Version`` or ``NoKey``: the earlier attempt may have
    applied, or not.

    The client reports this instead of :class:`VersionConflict` or :class:`KeyNotFound`
    because a lost reply to the first attempt looks exactly like a conflict on the retry
    (or, if the key was deleted since, like a missing key). Re-read the key to find out.
    """

    wire = "Maybe"


class BadRequest(TrioRaftError):
    """A request failed validation: malformed JSON, a missing or mistyped field, too large."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class StorageCorrupt(TrioRaftError):
    """Bytes on disk fail their checksum or framing, or the data files contradict each other
    (a hard state missing beside a log, say): they cannot be trusted. The message names the
    file, the offset and what to do."""


class StorageFailed(TrioRaftError):
    """A write or fsync failed. The node stops at once (fail-stop): it cannot know what
    reached the disk, so it must never acknowledge anything more."""


class SessionExpired(KVError):
    """An append's client session is no longer remembered (evicted to bound the table), so
    a retry could not be told from a new append: it is refused rather than applied twice."""

    wire = "SessionExpired"


class NoSpace(KVError):
    """The server's storage quota is used up: writes that grow the state are refused until
    space is freed (reads keep working)."""

    wire = "NoSpace"


class LeaseNotFound(KVError):
    """The lease does not exist (any more): it expired, or was revoked."""

    wire = "NoLease"

    def __init__(self, lease: int) -> None:
        super().__init__(f"lease {lease} does not exist: it expired or was revoked")
        self.lease = lease


class RaftError(TrioRaftError):
    """A Raft-level outcome a caller must handle."""


class NotLeader(RaftError):
    """This node is not the leader; ``leader`` is the id of the one it last heard from."""

    def __init__(self, leader: str | None = None) -> None:
        super().__init__(f"not the leader (leader hint: {leader})")
        self.leader = leader


class LeadershipLost(RaftError):
    """Leadership changed (or the node stopped) before the proposal was known committed."""


class ProposalTimedOut(RaftError):
    """No result within the operation timeout: the proposal may still commit, or not."""


class DataDirectoryConflict(TrioRaftError):
    """A data directory locked by another process, or recorded as another node's: two
    replicas on one disk would count as two copies of what is stored once."""
