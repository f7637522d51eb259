"""The fault model: a seeded plan deciding the fate of every call between two endpoints.

A *caller* (a client id) calls a *server* (a name). For each call, :meth:`Network.deliver`
draws every random decision up front from one seeded ``random.Random`` (a fixed number of
draws per call), so the same seed and the same sequence of calls replay the same fates:

1. if the pair is blocked or the server is down, the call fails after ``fail_delay``;
2. the request waits ``delay`` (and, with ``bytes_per_second`` set, its size over that rate:
   a link's bandwidth, where the caller passes the size); it is dropped with probability
   ``request_drop`` (the handler never runs; the call fails after ``fail_delay``);
3. the handler runs; if the pair is blocked or the server crashes meanwhile, the call is
   cancelled and fails at once: no reply from a server cut off mid-call is ever delivered;
4. the reply is dropped with probability ``reply_drop`` (the handler *did* run);
5. with probability ``long_reorder`` the reply is held ``long_delay`` (reordering);
6. the reply waits its size over ``bytes_per_second`` (when set); the pair is checked
   again, and the reply delivered.

Calls in flight are kept in the order they were made (never in an order of object
identity), so cutting them off wakes their tasks in a replayable order.

Counters follow the seeds: ``rpc_total`` counts every call; ``rpc_count[server]`` counts calls
whose handler ran; ``lost`` counts calls that failed (a request or a reply lost, or the pair
cut off), so a test can ask that its faults happened; ``bytes_total`` adds request bytes at
send and reply bytes at delivery, and ``bytes_count[server]`` does the same per server.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

import trio

R = TypeVar("R")


@dataclass(frozen=True)
class Profile:
    """How unreliable the network is. Delays are ``(low, high)`` seconds, drawn uniformly."""

    request_drop: float = 0.0
    reply_drop: float = 0.0
    delay: tuple[float, float] = (0.0, 0.0)
    long_reorder: float = 0.0
    long_delay: tuple[float, float] = (0.2, 2.2)
    fail_delay: tuple[float, float] = (0.0, 0.1)
    #: A link's bandwidth (None: unlimited): a request or reply of ``n`` bytes takes
    #: ``n / bytes_per_second`` more seconds to cross. Draws nothing.
    bytes_per_second: float | None = None

    def with_long_reordering(self) -> Profile:
        """This profile plus the seeds' long reordering (~2/3 of replies held 0.2-2.2 s)."""
        return replace(self, long_reorder=2 / 3)


#: No drops, no delays.
RELIABLE = Profile()
#: The C/Rust ports' unreliable mode: half the requests and half the replies lost, 1-5 ms
#: delay; a lost call fails as fast as those ports' proxies answer it.
UNRELIABLE = Profile(
    request_drop=0.5, reply_drop=0.5, delay=(0.001, 0.005), fail_delay=(0.001, 0.005)
)
#: The MIT suites' unreliable mode: 10% / 10% lost, 0-26 ms delay.
MIT_UNRELIABLE = Profile(request_drop=0.1, reply_drop=0.1, delay=(0.0, 0.026))


@dataclass(frozen=True)
class Fate:
    """Every decision about one call, drawn before it starts."""

    delay: float
    drop_request: bool
    drop_reply: bool
    reply_delay: float
    fail_delay: float


@dataclass(eq=False)
class _InFlight(Generic[R]):
    caller: str
    server: str
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


class Network:
    """Seeded fault injection between callers and servers (see the module docstring).

    ``log``, if given, receives one line per decision; the same seed replays the same lines.
    """

    def __init__(
        self,
        seed: int,
        profile: Profile = RELIABLE,
        *,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.seed = seed
        self.profile = profile
        self._rng = random.Random(seed)
        self._log = log
        self._blocked: set[tuple[str, str]] = set()
        self._down: set[str] = set()
        self._in_flight: dict[int, _InFlight[object]] = {}  # by call number
        self._calls = 0
        self.rpc_total = 0
        self.rpc_count: Counter[str] = Counter()
        self.lost = 0
        self.bytes_total = 0
        self.bytes_count: Counter[str] = Counter()

    # -- configuration -------------------------------------------------------------------

    def set_profile(self, profile: Profile) -> None:
        self.profile = profile

    def block(self, caller: str, server: str) -> None:
        """Calls from ``caller`` to ``server`` fail from now on, in-flight ones included."""
        self._blocked.add((caller, server))
        self._cut(lambda c: c.caller == caller and c.server == server)

    def unblock(self, caller: str, server: str) -> None:
        self._blocked.discard((caller, server))

    def disconnect(self, node: str, others: Iterable[str]) -> None:
        """Cut ``node`` from each of ``others`` in both directions."""
        for other in others:
            if other != node:
                self.block(node, other)
                self.block(other, node)

    def connect(self, node: str, others: Iterable[str]) -> None:
        """Undo :meth:`disconnect` between ``node`` and each of ``others``."""
        for other in others:
            self.unblock(node, other)
            self.unblock(other, node)

    def partition(self, *groups: Iterable[str]) -> None:
        """Heal everything, then cut every pair of nodes that lie in different groups."""
        self.heal()
        sets = [set(g) for g in groups]
        for i, group in enumerate(sets):
            for other in sets[i + 1 :]:
                for a in group:
                    self.disconnect(a, other)

    def heal(self) -> None:
        """Remove every block (crashed servers stay down)."""
        self._blocked.clear()

    def crash(self, server: str) -> None:
        """Take ``server`` off the network: calls to it fail, in-flight ones included."""
        self._down.add(server)
        self._cut(lambda c: c.server == server)

    def restart(self, server: str) -> None:
        self._down.discard(server)

    def reachable(self, caller: str, server: str) -> bool:
        return server not in self._down and (caller, server) not in self._blocked

    def _cut(self, matches: Callable[[_InFlight[object]], bool]) -> None:
        for call in self._in_flight.values():
            if matches(call):
                call.scope.cancel()

    # -- delivery ------------------------------------------------------------------------

    def draw_fate(self) -> Fate:
        """Draw the decisions for the next call: always the same number of draws."""
        p, rng = self.profile, self._rng
        delay = rng.uniform(*p.delay)
        drop_request = rng.random() < p.request_drop
        drop_reply = rng.random() < p.reply_drop
        reorder = rng.random() < p.long_reorder
        long_delay = rng.uniform(*p.long_delay)
        fail_delay = rng.uniform(*p.fail_delay)
        return Fate(delay, drop_request, drop_reply, long_delay if reorder else 0.0, fail_delay)

    async def deliver(
        self,
        caller: str,
        server: str,
        send: Callable[[], Awaitable[R]],
        request_bytes: int = 0,
        reply_bytes: Callable[[R], int] = lambda _: 0,
    ) -> R | None:
        """Run ``send`` (the delivery of one request) under this network's plan.

        Returns its result, or ``None`` when the call is lost.
        """
        self._calls += 1
        call_number = self._calls
        self.rpc_total += 1
        self._count_bytes(server, request_bytes)
        fate = self.draw_fate()
        if self._log is not None:
            self._log(f"call {call_number} {caller}->{server}: {fate}")
        if not self.reachable(caller, server):
            self.lost += 1
            await trio.sleep(fate.fail_delay)
            return None
        await trio.sleep(fate.delay + self._crossing(request_bytes))
        if fate.drop_request or not self.reachable(caller, server):
            self.lost += 1
            await trio.sleep(fate.fail_delay)
            return None
        self.rpc_count[server] += 1
        call: _InFlight[object] = _InFlight(caller, server)
        self._in_flight[call_number] = call
        try:
            with call.scope:
                result = await send()
        finally:
            del self._in_flight[call_number]
        if call.scope.cancelled_caught or fate.drop_reply:
            self.lost += 1
            return None
        size = reply_bytes(result)
        if fate.reply_delay or self.profile.bytes_per_second:
            await trio.sleep(fate.reply_delay + self._crossing(size))
        if not self.reachable(caller, server):
            self.lost += 1
            return None
        self._count_bytes(server, size)
        return result

    def _crossing(self, size: int) -> float:
        """How long ``size`` bytes take over the profile's bandwidth."""
        rate = self.profile.bytes_per_second
        return size / rate if rate else 0.0

    def _count_bytes(self, server: str, n: int) -> None:
        self.bytes_total += n
        self.bytes_count[server] += n
