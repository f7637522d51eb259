"""How a Raft node reaches its peers: over HTTP, or in memory through a fault plan.

A transport's ``call(peer, method, args, reply_type)`` returns the peer's decoded reply, or
``None`` if the call was lost; it never raises for network trouble. The caller bounds it
with a deadline.

- :class:`HttpTransport`: one :class:`RpcClient` per peer (the node's id as client id), so a
  fault proxy in front of a peer can tell callers apart; optionally signed (peer auth) and
  over TLS.
- :class:`MemoryNetwork` / :class:`MemoryTransport`: for tests on virtual time. Every call is
  encoded to JSON and decoded on the other side (deep copies, validated like HTTP input, bytes
  counted) and delivered through a :class:`~trioraft.testing.Network` plan.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

from .._errors import BadRequest
from .auth import PeerAuth
from .codec import decode, encode
from .http import Route, RpcClient
from .tls import ClientTls

T = TypeVar("T")


class Transport(Protocol):
    async def call(self, peer: str, method: str, args: Any, reply_type: type[T]) -> T | None: ...


class HttpTransport:
    """Peers reached over HTTP at the given URLs (which may be fault proxies).

    ``peer_auth`` signs every request and checks every reply; ``tls`` sets how ``https://``
    peers are verified and the certificate shown to them.
    """

    def __init__(
        self,
        node_id: str,
        peer_urls: Mapping[str, str],
        *,
        timeout: float = 1.0,
        peer_auth: PeerAuth | None = None,
        tls: ClientTls | None = None,
    ) -> None:
        self._clients = {
            peer: RpcClient(url, node_id, timeout=timeout, peer_auth=peer_auth, tls=tls)
            for peer, url in peer_urls.items()
        }

    async def call(self, peer: str, method: str, args: Any, reply_type: type[T]) -> T | None:
        try:
            return await self._clients[peer].call(method, args, reply_type)
        except BadRequest:
            return None  # refused: to Raft, as good as lost (it never stops a node)

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()


class MemoryNetwork:
    """Nodes registered by id, reached through ``network`` (a :class:`Network` plan)."""

    def __init__(self, network: Any) -> None:
        self.network = network
        self._routes: dict[str, Mapping[str, Route]] = {}

    def register(self, node_id: str, routes: Mapping[str, Route]) -> None:
        self._routes[node_id] = routes

    def unregister(self, node_id: str) -> None:
        self._routes.pop(node_id, None)

    def transport(self, node_id: str) -> MemoryTransport:
        return MemoryTransport(self, node_id)


class MemoryTransport:
    def __init__(self, memory: MemoryNetwork, node_id: str) -> None:
        self._memory = memory
        self._id = node_id

    async def call(self, peer: str, method: str, args: Any, reply_type: type[T]) -> T | None:
        body = json.dumps(encode(args))

        async def send() -> str | None:
            route = self._memory._routes.get(peer, {}).get(method)
            if route is None:
                return None
            try:
                reply = await route.handler(decode(route.args, json.loads(body)))
            except BadRequest:
                return None
            return json.dumps(encode(reply))

        raw = await self._memory.network.deliver(
            self._id, peer, send, len(body), lambda r: len(r) if r is not None else 0
        )
        return None if raw is None else decode(reply_type, json.loads(raw))
