"""An HTTP fault-injecting proxy for one server, running as a Trio task in your nursery.

Callers talk to the proxy's URL instead of the server's; the proxy reads the caller's id from
the ``X-Client-Id`` header and forwards each request under its :class:`Network`'s plan. A call
the plan loses closes the caller's connection (after the plan's failure delay), which an
HTTP client sees exactly as a lost packet: an error, never a reply.

Invariants:
- Each caller connection is paired with its own backend connection, so requests on it stay
  in order and a lost call tears down just that pair. A backend connection the server closes
  after a reply (``Connection: close``) is replaced for the caller's next request.
- A request the plan drops is never forwarded; a reply the plan drops was produced by the
  server (its handler ran) and is discarded.
- :meth:`HttpProxy.set_backend` retargets the proxy (a restarted server may bind a new port).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from urllib.parse import urlsplit

import h11
import trio

from ..rpc.http import CLIENT_ID_HEADER
from ._network import Network

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


class HttpProxy:
    """Forward HTTP calls to ``backend_url`` for the server named ``server`` in ``network``."""

    def __init__(self, network: Network, server: str, backend_url: str | None = None) -> None:
        self.network = network
        self.server = server
        self.url = ""
        self._backend: tuple[str, int] | None = None
        if backend_url is not None:
            self.set_backend(backend_url)

    def set_backend(self, backend_url: str) -> None:
        """Forward to ``backend_url`` from now on (until then, every call is lost)."""
        parts = urlsplit(backend_url)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"backend URL needs a host and a port: {backend_url!r}")
        self._backend = (parts.hostname, parts.port)

    async def run(
        self,
        host: str = "127.0.0.1",
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled; ``task_status`` gets the proxy's URL."""
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, self._handle, 0, host=host))
            port = listeners[0].socket.getsockname()[1]
            self.url = f"http://{host}:{port}"
            task_status.started(self.url)

    async def _handle(self, stream: trio.SocketStream) -> None:
        caller_side = _Peer(stream, h11.SERVER)
        backend: _Peer | None = None
        try:
            while True:
                request = await caller_side.receive()
                if request is None:
                    return
                caller = _header(request.head, CLIENT_ID_HEADER) or _ANONYMOUS
                if backend is None:
                    backend = await self._connect()
                reply = await self.network.deliver(
                    caller,
                    self.server,
                    partial(self._exchange, backend, request),
                    request_bytes=len(request.body),
                    reply_bytes=lambda r: len(r.body) if r is not None else 0,
                )
                if reply is None:
                    return  # lost: the caller sees its connection drop
                if backend is not None and backend.conn.their_state is not h11.DONE:
                    # The server is closing this connection (e.g. after its keep-alive
                    # request limit): the next request from this caller gets a new one.
                    await backend.stream.aclose()
                    backend = None
                await caller_side.send(reply)
                caller_side.next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return
        finally:
            if backend is not None:
                await backend.stream.aclose()
            await stream.aclose()

    async def _connect(self) -> _Peer | None:
        if self._backend is None:
            return None
        try:
            return _Peer(await trio.open_tcp_stream(*self._backend), h11.CLIENT)
        except OSError:
            return None

    async def _exchange(self, backend: _Peer | None, request: _Message) -> _Message | None:
        """Forward one request and read its reply; ``None`` if the backend failed."""
        if backend is None:
            return None
        try:
            await backend.send(request)
            reply = await backend.receive()
            if backend.conn.their_state is h11.DONE:
                backend.next_cycle()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return None
        return reply


def _header(head: h11.Request | h11.Response, name: str) -> str | None:
    wanted = name.lower().encode()
    for key, value in head.headers:
        if key == wanted:
            return value.decode("latin-1")
    return None
