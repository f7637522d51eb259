"""Leases: keys that live while their owner keeps renewing, deleted through the log otherwise.

Two halves, both pure (no clock read, no I/O):

- :class:`LeaseTable` is replicated state, changed only by applied log entries: which leases
  exist, their TTLs and the keys attached to each. Lease ids are numbered by a counter in the
  table, so every replica gives the same id to the same grant.
- :class:`LeaseClock` is the leader's alone: when each lease expires, on the leader's monotonic
  clock (passed in as ``now``). A lease expires only when the leader says so through the log
  (an ``expire`` op applied like any other), so every replica deletes the same keys at the same
  index. A new leader restarts every lease at its full TTL: it cannot know how long ago the
  old leader last renewed one, and expiring early would take a lock from a live holder.

Invariants:
- A key is attached to at most one lease; attaching it elsewhere (or writing it without a
  lease) detaches it, and deleting it detaches it.
- Revoking or expiring a lease removes it and returns its keys in sorted order (the order in
  which the machine deletes them, the same on every replica).
- A client session is attached to at most one lease, and only while the machine remembers
  it: a session it forgets (the least recently used, past its bound) is detached.
- The clock's heap holds at most twice the current deadlines, plus a little.
- The clock knows a lease only after the leader saw it applied (``grant``/``restart_all``);
  ``expired(now)`` lists leases whose deadline has passed, earliest first, ties by id.
- Safety of a holder: a keepalive is answered only after the leader confirmed its leadership
  (ReadIndex), so any later leader was elected after it and restarts the lease at a full TTL
  from then. A holder that counts its TTL from when it *sent* the keepalive therefore always
  stops before the lease can expire anywhere (given clocks that run at the same rate).
"""

from __future__ import annotations

import heapq
from collections.abc import Container
from dataclasses import dataclass, field

#: Most leases one replica keeps (a grant beyond it answers ``NoSpace``).
DEFAULT_MAX_LEASES = 100_000


@dataclass(slots=True)
class Lease:
    ttl: int
    keys: set[str] = field(default_factory=set)
    sessions: set[str] = field(default_factory=set)  # client sessions that end with it


class LeaseTable:
    """The leases and their keys, as the log made them."""

    def __init__(self, *, max_leases: int = DEFAULT_MAX_LEASES) -> None:
        self.max_leases = max_leases
        self.leases: dict[int, Lease] = {}
        self.owner: dict[str, int] = {}  # key -> its lease
        self.session_owner: dict[str, int] = {}  # client session -> the lease it ends with
        self.granted = 0  # leases ever granted: numbers the next one

    def grant(self, ttl: int) -> int | None:
        """A new lease's id, or ``None`` when the table is full."""
        if len(self.leases) >= self.max_leases:
            return None
        self.granted += 1
        self.leases[self.granted] = Lease(ttl)
        return self.granted

    def attach(self, key: str, lease: int) -> None:
        """Tie ``key`` to ``lease`` (which must exist), untying it from any other."""
        self.detach(key)
        self.leases[lease].keys.add(key)
        self.owner[key] = lease

    def detach(self, key: str) -> None:
        lease = self.owner.pop(key, None)
        if lease is not None:
            self.leases[lease].keys.discard(key)

    def attach_session(self, session: str, lease: int) -> None:
        """End client ``session`` with ``lease`` (which must exist)."""
        self.leases[lease].sessions.add(session)
        self.session_owner[session] = lease

    def detach_session(self, session: str) -> None:
        """``session`` was forgotten: its lease no longer ends it (nor keeps its name)."""
        lease = self.session_owner.pop(session, None)
        if lease is not None:
            self.leases[lease].sessions.discard(session)

    def keep_sessions(self, sessions: Container[str]) -> None:
        """Detach every session not in ``sessions`` (a snapshot written before forgotten
        sessions were detached still names them)."""
        for session in [s for s in self.session_owner if s not in sessions]:
            self.detach_session(session)

    def revoke(self, lease: int) -> Lease | None:
        """Remove ``lease`` and return it, for the caller to delete its keys (in sorted
        order) and end its sessions; ``None`` if there is no such lease."""
        gone = self.leases.pop(lease, None)
        if gone is not None:
            for key in gone.keys:
                del self.owner[key]
            for session in gone.sessions:
                del self.session_owner[session]
        return gone

    def to_wire(self) -> dict[str, object]:
        return {
            "granted": self.granted,
            "leases": {
                str(id_): [lease.ttl, sorted(lease.keys), sorted(lease.sessions)]
                for id_, lease in self.leases.items()
            },
        }

    def replace_from_wire(self, state: object) -> None:
        """Restore from :meth:`to_wire`'s output; ``ValueError`` if it is not one."""
        try:
            granted = state["granted"]  # type: ignore[index]
            raw = state["leases"]  # type: ignore[index]
            leases = {
                int(id_): Lease(ttl, set(keys), set(sessions))
                for id_, (ttl, keys, sessions) in raw.items()
            }
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a lease table: {exc!r}") from None
        owner: dict[str, int] = {}
        session_owner: dict[str, int] = {}
        for id_, lease in leases.items():
            names = (*lease.keys, *lease.sessions)
            if type(lease.ttl) is not int or not all(type(name) is str for name in names):
                raise ValueError("not a lease table: a TTL or key of the wrong type")
            for key in lease.keys:
                if key in owner:
                    raise ValueError(f"not a lease table: {key!r} is in two leases")
                owner[key] = id_
            for session in lease.sessions:
                if session in session_owner:
                    raise ValueError(f"not a lease table: session {session!r} in two leases")
                session_owner[session] = id_
        if type(granted) is not int or any(id_ > granted or id_ < 1 for id_ in leases):
            raise ValueError("not a lease table: a lease id out of range")
        self.granted, self.leases, self.owner = granted, leases, owner
        self.session_owner = session_owner


#: Stale heap pairs tolerated beyond the current ones (a rebuild is linear: amortized).
_STALE_SLACK = 64


class LeaseClock:
    """The leader's deadlines for the leases (``now`` is its monotonic clock, in seconds)."""

    def __init__(self) -> None:
        self.deadlines: dict[int, float] = {}
        self._heap: list[tuple[float, int]] = []  # (deadline, id); stale pairs skipped

    def restart_all(self, ttls: dict[int, int], now: float) -> None:
        """On becoming leader: every lease gets its full TTL from ``now``."""
        self.deadlines = {id_: now + ttl for id_, ttl in ttls.items()}
        self._heap = sorted((deadline, id_) for id_, deadline in self.deadlines.items())

    def renew(self, lease: int, ttl: int, now: float) -> None:
        """A lease granted or kept alive at ``now``."""
        deadline = now + ttl
        self.deadlines[lease] = deadline
        heapq.heappush(self._heap, (deadline, lease))
        self._drop_stale()

    def forget(self, lease: int) -> None:
        self.deadlines.pop(lease, None)
        self._drop_stale()

    def _drop_stale(self) -> None:
        """Rebuild the heap once stale pairs outnumber the current ones: a lease kept alive
        leaves its old deadline behind, and while an earlier deadline heads the heap
        nothing pops it (keepalives would grow the heap without bound)."""
        if len(self._heap) > 2 * len(self.deadlines) + _STALE_SLACK:
            self._heap = [(deadline, id_) for id_, deadline in self.deadlines.items()]
            heapq.heapify(self._heap)

    def expired(self, now: float) -> list[int]:
        """Leases past their deadline, earliest first (they stay until :meth:`forget`)."""
        due: list[tuple[float, int]] = []
        while self._heap and self._heap[0][0] <= now:
            deadline, lease = heapq.heappop(self._heap)
            if self.deadlines.get(lease) == deadline:
                due.append((deadline, lease))
        for pair in due:
            heapq.heappush(self._heap, pair)
        return [lease for _, lease in due]

    def next_deadline(self) -> float | None:
        """The earliest deadline still current, dropping stale ones on the way."""
        while self._heap:
            deadline, lease = self._heap[0]
            if self.deadlines.get(lease) == deadline:
                return deadline
            heapq.heappop(self._heap)
        return None
