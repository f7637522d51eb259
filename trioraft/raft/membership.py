"""Cluster membership as pure values: configurations, the changes between them, and where
each configuration stands in the log.

A :class:`Configuration` names the voters (who elect and whose acknowledgements commit)
and the learners (who receive the log but neither vote nor count), the peer address of
each member that has one, and the client URL of each member that has one (opaque to Raft:
the application's servers use it to point their clients at a member, so every node knows
it after any leader change or restart). It travels in the log as a *configuration entry*:
an entry whose command is :data:`CONFIGURATION_PREFIX` followed by the whole new
configuration as JSON (``voters``, ``learners``, ``addresses``, ``client_urls``).
Like the leader's no-op, the applier never hands such an entry to the application.

Single-server changes (Raft thesis §4.1): each change adds a learner, promotes a learner
to voter, or removes one member; so the voters of two consecutive configurations differ by
at most one, and any majority of the old voters overlaps any majority of the new ones.

Invariants:
- A node uses the latest configuration in its log, committed or not, from the moment the
  entry is appended; when that entry is truncated away, the one before it is in effect
  again (:class:`ConfigurationHistory`).
- The configuration as of a snapshot's index is kept with the snapshot (the *base* here),
  so compacting the log never loses the configuration in effect.
- An entry or snapshot written before client URLs were kept (no ``client_urls``) loads as
  a configuration without any.
- Voters and learners are kept sorted; no id is both a voter and a learner; only members
  have an address or a client URL (a removal drops them);
  :func:`apply_change` refuses anything but a single-server change, and never removes the
  last voter.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._errors import BadRequest, RaftError
from ..rpc.codec import stdlib_json
from .log import Entry

#: Starts the command of a configuration entry. An application's commands may not start
#: with it (the NUL character is never part of a command a real application writes).
CONFIGURATION_PREFIX = "\x00raft-configuration "


class MembershipChangeRefused(RaftError):
    """The leader cannot start this membership change now (another change is not yet
    committed, or no entry of its term has committed yet), or the change itself is invalid."""


@dataclass(frozen=True)
class Configuration:
    """Who is in the cluster. ``addresses`` maps a member's id to its peer address; a
    member without one (the static peers a node was started with) is reached as its
    transport was told at start. ``client_urls`` maps a member's id to where clients reach
    it (given when it was added; Raft only carries it)."""

    voters: tuple[str, ...]
    learners: tuple[str, ...] = ()
    addresses: Mapping[str, str] = field(default_factory=dict, hash=False)
    client_urls: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if set(self.voters) & set(self.learners):
            raise ValueError("a member cannot be both a voter and a learner")
        # Kept sorted, so that every node sees (and compares) the same configuration.
        object.__setattr__(self, "voters", tuple(sorted(set(self.voters))))
        object.__setattr__(self, "learners", tuple(sorted(set(self.learners))))

    @classmethod
    def of_voters(cls, voters: Iterable[str]) -> Configuration:
        """The static configuration a node is given at start: these voters, no addresses."""
        return cls(tuple(dict.fromkeys(voters)))

    @property
    def members(self) -> tuple[str, ...]:
        return self.voters + self.learners

    def is_voter(self, node_id: str) -> bool:
        return node_id in self.voters

    def to_json(self) -> dict[str, Any]:
        return {
            "voters": list(self.voters),
            "learners": list(self.learners),
            "addresses": dict(sorted(self.addresses.items())),
            "client_urls": dict(sorted(self.client_urls.items())),
        }

    @classmethod
    def from_json(cls, data: Any) -> Configuration:
        """The configuration ``data`` (as :meth:`to_json` wrote it); raises ``ValueError``."""
        if not isinstance(data, dict):
            raise ValueError("a configuration is a JSON object")
        voters, learners = data.get("voters"), data.get("learners", [])
        addresses = data.get("addresses", {})
        client_urls = data.get("client_urls", {})  # absent before client URLs were kept
        for name, ids in (("voters", voters), ("learners", learners)):
            if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
                raise ValueError(f"{name}: expected a list of ids")
        for name, urls in (("addresses", addresses), ("client_urls", client_urls)):
            if not isinstance(urls, dict) or not all(isinstance(v, str) for v in urls.values()):
                raise ValueError(f"{name}: expected an object of strings")
        assert isinstance(voters, list) and isinstance(learners, list)
        if len(set(voters)) != len(voters) or len(set(learners)) != len(learners):
            raise ValueError("a member is listed twice")
        return cls(tuple(voters), tuple(learners), dict(addresses), dict(client_urls))


def encode_configuration(configuration: Configuration) -> str:
    """The command of a configuration entry holding ``configuration``."""
    return CONFIGURATION_PREFIX + stdlib_json(configuration.to_json())


def decode_configuration(command: str) -> Configuration | None:
    """The configuration a configuration entry's command holds; ``None`` for any other
    command. Raises ``ValueError`` for a damaged configuration entry."""
    if not command.startswith(CONFIGURATION_PREFIX):
        return None
    try:
        data = json.loads(command[len(CONFIGURATION_PREFIX) :])
    except RecursionError:
        raise ValueError("a configuration nested too deeply") from None
    return Configuration.from_json(data)


def is_configuration_command(command: str) -> bool:
    return command.startswith(CONFIGURATION_PREFIX)


@dataclass(frozen=True)
class MembershipChange:
    """One single-server change; exactly one of ``add_learner``, ``promote`` and
    ``remove`` is set.

    ``add_learner``: (id, peer address) of a new member that receives the log without voting
    (``client_url``, if given, is where its clients reach it); ``promote``: a learner becomes
    a voter; ``remove``: a member (voter or learner) leaves.
    """

    add_learner: tuple[str, str] | None = None
    promote: str | None = None
    remove: str | None = None
    client_url: str = ""

    def __post_init__(self) -> None:
        chosen = [x for x in (self.add_learner, self.promote, self.remove) if x is not None]
        if len(chosen) != 1:
            raise BadRequest("a membership change is exactly one of add_learner, promote, remove")
        if self.client_url and self.add_learner is None:
            raise BadRequest("a client URL is given only with add_learner")

    def describe(self) -> str:
        if self.add_learner is not None:
            return f"add learner {self.add_learner[0]} at {self.add_learner[1]!r}"
        if self.promote is not None:
            return f"promote {self.promote}"
        return f"remove {self.remove}"


def uncommitted_change(history: ConfigurationHistory, commit_index: int) -> int:
    """The index of the configuration entry not committed yet as of ``commit_index``, or 0:
    a leader starts a change only once the last one committed. Consecutive single-server
    changes keep majorities overlapping only pairwise: with two in flight, a node still on
    the first configuration and one already on the third can make disjoint majorities
    (voters 1-3, two of them removed: 2 and 3 elect one leader while 1 alone is another)."""
    latest = history.latest_index
    return latest if latest > commit_index else 0


def settled_in_term(commit_term: int | None, term: int) -> bool:
    """Whether a leader of ``term``, whose commit index is an entry of ``commit_term``, may
    start a membership change: only once an entry of its own term has committed. Until
    then its log may lack an earlier leader's change, and a change of its own, made from
    another configuration, could have a majority that misses that one's (Ongaro's
    counterexample, raft-dev 2015: of voters a-d, a adds e, an entry only a and e hold; b,
    elected by b-d, removes d, committed by b and c alone; a, elected by a, d and e, then
    overwrites it)."""
    return commit_term == term


def apply_change(current: Configuration, change: MembershipChange) -> Configuration:
    """The configuration after ``change``; raises :class:`BadRequest` if it does not apply."""
    addresses = dict(current.addresses)
    client_urls = dict(current.client_urls)
    if change.add_learner is not None:
        node_id, address = change.add_learner
        if not node_id:
            raise BadRequest("add_learner: the id must not be empty")
        if node_id in current.members:
            raise BadRequest(f"add_learner: {node_id!r} is a member already")
        addresses[node_id] = address
        if change.client_url:
            client_urls[node_id] = change.client_url
        return Configuration(current.voters, (*current.learners, node_id), addresses, client_urls)
    if change.promote is not None:
        node_id = change.promote
        if node_id not in current.learners:
            raise BadRequest(f"promote: {node_id!r} is not a learner")
        learners = tuple(i for i in current.learners if i != node_id)
        return Configuration((*current.voters, node_id), learners, addresses, client_urls)
    node_id = change.remove or ""
    if node_id not in current.members:
        raise BadRequest(f"remove: {node_id!r} is not a member")
    if current.voters == (node_id,):
        raise BadRequest(f"remove: {node_id!r} is the last voter")
    addresses.pop(node_id, None)
    client_urls.pop(node_id, None)
    return Configuration(
        tuple(i for i in current.voters if i != node_id),
        tuple(i for i in current.learners if i != node_id),
        addresses,
        client_urls,
    )


class ConfigurationHistory:
    """The configurations a log holds, and the one in effect at each index.

    ``base`` is the configuration as of the log's snapshot index (or the static one);
    ``changes`` lists (index, configuration) for each configuration entry after it, in
    index order. The core tells it every append, truncation and compaction of its log.
    """

    __slots__ = ("base", "changes")

    def __init__(self, base: Configuration) -> None:
        self.base = base
        self.changes: list[tuple[int, Configuration]] = []

    @property
    def latest(self) -> Configuration:
        """The configuration in effect: the latest in the log, committed or not."""
        return self.changes[-1][1] if self.changes else self.base

    @property
    def latest_index(self) -> int:
        """The index of the latest configuration entry (0 if none is in the log)."""
        return self.changes[-1][0] if self.changes else 0

    def at(self, index: int) -> Configuration:
        """The configuration in effect once the log up to ``index`` is applied."""
        found = self.base
        for change_index, configuration in self.changes:
            if change_index > index:
                break
            found = configuration
        return found

    def appended(self, first_index: int, entries: Iterable[Entry]) -> bool:
        """``entries`` were appended from ``first_index``; whether one was a configuration."""
        found = False
        for offset, entry in enumerate(entries):
            if entry.command.startswith(CONFIGURATION_PREFIX):
                configuration = decode_configuration(entry.command)
                assert configuration is not None
                self.changes.append((first_index + offset, configuration))
                found = True
        return found

    def truncated(self, from_index: int) -> bool:
        """The log lost the entries from ``from_index``; whether a configuration went too."""
        kept = [c for c in self.changes if c[0] < from_index]
        changed = len(kept) != len(self.changes)
        self.changes = kept
        return changed

    def compacted(self, index: int, base: Configuration | None = None) -> None:
        """A snapshot stands for the log up to ``index``; its configuration is ``base``
        (default: the one this history says was in effect there)."""
        self.base = self.at(index) if base is None else base
        self.changes = [c for c in self.changes if c[0] > index]
