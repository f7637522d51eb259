"""How a Raft node reaches its peers: over HTTP, or in memory through a fault plan.

A transport's ``call(peer, method, args, reply_type)`` returns the peer's decoded reply, or
``None`` if the call was lost; it never raises for network trouble. The caller bounds it
with a deadline.

Membership changes reach a transport through :class:`PeerDirectory`: the node tells it a
new member's address (``set_peer_address``) and forgets a removed one (``forget_peer``),
so no node restarts for a change. A peer the transport does not know is a lost call.

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
from typing import Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import urlsplit

from .._errors import BadRequest
from .auth import PeerAuth
from .codec import decode, encode
from .http import Route, RpcClient
from .tls import ClientTls

T = TypeVar("T")


class Transport(Protocol):
    async def call(self, peer: str, method: str, args: Any, reply_type: type[T]) -> T | None: ...


@runtime_checkable
class PeerDirectory(Protocol):
    """A transport whose peers can change while it runs (see the module docstring)."""

    def check_peer_address(self, address: str) -> None:
        """Raise ``ValueError`` unless this transport can reach a peer at ``address``."""
        ...

    def set_peer_address(self, peer: str, address: str) -> None:
        """Reach ``peer`` at ``address`` from now on (``ValueError``, and no change, for an
        address :meth:`check_peer_address` refuses)."""
        ...

    def forget_peer(self, peer: str) -> None:
        """Stop reaching ``peer`` (calls to it are lost from now on)."""
        ...


#: An HTTP peer call's own time bound, behind the node's (see :class:`HttpTransport`).
DEFAULT_PEER_TIMEOUT = 60.0


class HttpTransport:
    """Peers reached over HTTP at the given URLs (which may be fault proxies).

    ``peer_auth`` signs every request and checks every reply; ``tls`` sets how ``https://``
    peers are verified and the certificate shown to them. ``timeout`` only backs up the
    node, which bounds every call itself: keep it at least
    ``RaftConfig.transport_timeout`` (the default, 60 s, is: a shorter one cut off the
    AppendEntries of large entries, sent again forever).
    """

    def __init__(
        self,
        node_id: str,
        peer_urls: Mapping[str, str],
        *,
        timeout: float = DEFAULT_PEER_TIMEOUT,
        peer_auth: PeerAuth | None = None,
        tls: ClientTls | None = None,
    ) -> None:
        self._id = node_id
        self._timeout = timeout
        self._peer_auth = peer_auth
        self._tls = tls
        self._urls = dict(peer_urls)
        self._clients = {peer: self._client(url) for peer, url in peer_urls.items()}
        self._retired: list[RpcClient] = []  # replaced or forgotten: closed by aclose

    def _client(self, url: str) -> RpcClient:
        return RpcClient(
            url, self._id, timeout=self._timeout, peer_auth=self._peer_auth, tls=self._tls
        )

    async def call(self, peer: str, method: str, args: Any, reply_type: type[T]) -> T | None:
        client = self._clients.get(peer)
        if client is None:
            return None  # not (or no longer) a peer
        try:
            return await client.call(method, args, reply_type)
        except BadRequest:
            return None  # refused: to Raft, as good as lost (it never stops a node)

    def check_peer_address(self, address: str) -> None:
        parts = urlsplit(address)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
            raise ValueError(f"expected http(s)://HOST:PORT, got {address!r}")

    def set_peer_address(self, peer: str, address: str) -> None:
        if self._urls.get(peer) == address:
            return
        self.check_peer_address(address)
        self.forget_peer(peer)
        self._urls[peer] = address
        self._clients[peer] = self._client(address)

    def forget_peer(self, peer: str) -> None:
        self._urls.pop(peer, None)
        client = self._clients.pop(peer, None)
        if client is not None:
            self._retired.append(client)

    async def aclose(self) -> None:
        for client in [*self._clients.values(), *self._retired]:
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
    """Reaches every node registered on its :class:`MemoryNetwork` by id: a peer's
    address (``mem://ID`` by convention) changes nothing."""

    def __init__(self, memory: MemoryNetwork, node_id: str) -> None:
        self._memory = memory
        self._id = node_id
        #: The addresses it was told (see :class:`PeerDirectory`): for tests to look at.
        self.addresses: dict[str, str] = {}

    def check_peer_address(self, address: str) -> None:
        pass  # every node on the network is reached by its id

    def set_peer_address(self, peer: str, address: str) -> None:
        self.addresses[peer] = address

    def forget_peer(self, peer: str) -> None:
        self.addresses.pop(peer, None)

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
