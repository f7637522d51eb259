"""An HTTP fault-injecting proxy for one server, running as a Trio task in your nursery.

Callers talk to the proxy's URL instead of the server's; the proxy reads the caller's id from
the ``X-Client-Id`` header and forwards each request under its :class:`Network`'s plan. A call
the plan loses closes the caller's connection (after the plan's failure delay), which an
HTTP client sees exactly as a lost packet: an error, never a reply.

Invariants:
- Each caller connection is paired with its own backend connection, so requests on it stay
  in order and a lost call tears down just that pair. The backend connection carries the
  caller's next requests too, as the caller's connection does (a new connection per call
  would cost the server an accept and a connection set-up for every forwarded call); it is
  replaced when the server closes it after a reply (``Connection: close``), when it has
  been idle for ``backend_idle`` (before the server's keep-alive timeout can close it under
  a request), and after :meth:`HttpProxy.set_backend`. A call the plan refuses before
  forwarding it opens no backend connection.
- A request the plan drops is never forwarded; a reply the plan drops was produced by the
  server (its handler ran) and is discarded.
- :meth:`HttpProxy.set_backend` retargets the proxy (a restarted server may bind a new port).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from urllib.parse import urlsplit

import h11
import trio

from ..rpc.http import CLIENT_ID_HEADER
from ._network import Network

#: Seconds a backend connection may stay idle and still be reused: under the 5 s keep-alive
#: timeout of :func:`trioraft.rpc.http.serve`.
DEFAULT_BACKEND_IDLE = 1.0

_HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length"}
_MAX_READ = 65536
_ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class _Message:
    """One HTTP request or response head with its whole body."""

    head: h11.Request | h11.Response
    body: bytes


class _Peer:
    """One side of a connection: a stream and its h11 state machine."""

    def __init__(self, stream: trio.abc.Stream, role: type[h11.CLIENT] | type[h11.SERVER]):
        self.stream = stream
        self.conn = h11.Connection(role)

    async def send(self, message: _Message) -> None:
        headers = [(k, v) for k, v in message.head.headers if k.lower() not in _HOP_BY_HOP]
        headers.append((b"content-length", str(len(message.body)).encode()))
        head = message.head
        if isinstance(head, h11.Request):
            event: h11.Request | h11.Response = h11.Request(
                method=head.method, target=head.target, headers=headers
            )
        else:
            event = h11.Response(status_code=head.status_code, headers=headers)
        data = self.conn.send(event) + self.conn.send(h11.Data(data=message.body))
        data += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)

    async def receive(self) -> _Message | None:
        """The next whole message, or ``None`` if the other side closed cleanly."""
        head = None
        body = bytearray()
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(_MAX_READ))
            elif isinstance(event, h11.Request | h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return _Message(head, bytes(body))
            elif isinstance(event, h11.ConnectionClosed):
                return None

    def next_cycle(self) -> None:
        self.conn.start_next_cycle()

    def ready_for_next(self) -> bool:
        """Start the next request-reply cycle, if this connection can carry one."""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            return True
        return False


class Front:
    """A listener in front of one backend that may move (a server restarted on a new
    port): its own URL stays, and :meth:`set_backend` says where new calls go. Subclasses
    say how a connection is served (``_handle``) and the scheme of their URL."""

    scheme = "http"

    def __init__(self, backend_url: str | None = None) -> None:
        self.url = ""
        self.backend_address: tuple[str, int] | None = None
        if backend_url is not None:
            self.set_backend(backend_url)

    def set_backend(self, backend_url: str) -> None:
        """Forward to ``backend_url`` from now on (until then, every call fails)."""
        self.backend_address = backend_address(backend_url)

    async def run(
        self,
        host: str = "127.0.0.1",
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled; ``task_status`` gets this front's URL."""
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, self._handle, 0, host=host))
            port = listeners[0].socket.getsockname()[1]
            self.url = f"{self.scheme}://{host}:{port}"
            task_status.started(self.url)

    async def _handle(self, stream: trio.SocketStream) -> None:
        raise NotImplementedError


class HttpProxy(Front):
    """Forward HTTP calls to ``backend_url`` for the server named ``server`` in ``network``."""

    def __init__(
        self,
        network: Network,
        server: str,
        backend_url: str | None = None,
        *,
        backend_idle: float = DEFAULT_BACKEND_IDLE,
    ) -> None:
        self.network = network
        self.server = server
        #: A backend connection idle this long is replaced, not reused: keep it under the
        #: server's keep-alive timeout, so that the server never closes one under a request.
        self.backend_idle = backend_idle
        super().__init__(backend_url)

    async def _handle(self, stream: trio.SocketStream) -> None:
        caller_side = _Peer(stream, h11.SERVER)
        backend = _Backend(self)
        try:
            while True:
                request = await caller_side.receive()
                if request is None:
                    return
                caller = _header(request.head, CLIENT_ID_HEADER) or _ANONYMOUS
                reply = await self.network.deliver(
                    caller,
                    self.server,
                    partial(backend.exchange, request),
                    request_bytes=len(request.body),
                    reply_bytes=lambda r: len(r.body) if r is not None else 0,
                )
                if reply is None:
                    return  # lost: the caller sees its connection drop
                await caller_side.send(reply)
                caller_side.next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return
        finally:
            await backend.aclose()
            await stream.aclose()


class _Backend:
    """The backend connection of one caller connection: opened for the first request that
    is forwarded, and kept for the next ones while the server keeps it open, unless idle for
    :attr:`HttpProxy.backend_idle` or the proxy was retargeted meanwhile."""

    def __init__(self, proxy: HttpProxy) -> None:
        self._proxy = proxy
        self._peer: _Peer | None = None
        self._address: tuple[str, int] | None = None
        self._idle_since = -math.inf

    async def exchange(self, request: _Message) -> _Message | None:
        """Forward one request and read its reply; ``None`` if the backend failed."""
        if self._peer is not None and (
            self._address != self._proxy.backend_address
            or trio.current_time() - self._idle_since >= self._proxy.backend_idle
        ):
            await self.aclose()
        if self._peer is None:
            self._address = self._proxy.backend_address
            if self._address is None:
                return None
            try:
                self._peer = _Peer(await trio.open_tcp_stream(*self._address), h11.CLIENT)
            except OSError:
                return None
        peer = self._peer
        try:
            await peer.send(request)
            reply = await peer.receive()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return None
        if reply is not None and peer.ready_for_next():
            self._idle_since = trio.current_time()
        else:
            # The server is closing this connection (``Connection: close``, e.g. after its
            # keep-alive request limit): the caller's next request gets a new one.
            await self.aclose()
        return reply

    async def aclose(self) -> None:
        peer, self._peer = self._peer, None
        if peer is not None:
            await peer.stream.aclose()


def backend_address(url: str) -> tuple[str, int]:
    """The host and port a proxy forwards to, from its backend's URL (any scheme)."""
    parts = urlsplit(url)
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"backend URL needs a host and a port: {url!r}")
    return parts.hostname, parts.port


def _header(head: h11.Request | h11.Response, name: str) -> str | None:
    wanted = name.lower().encode()
    for key, value in head.headers:
        if key == wanted:
            return value.decode("latin-1")
    return None
