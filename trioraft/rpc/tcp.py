"""Raft peer RPCs over plain TCP: length-prefixed JSON frames, with the HTTP routes' checks.

HTTP stays the default peer transport. This one exists because replication is many small
messages, and on this stack an HTTP request costs 15-20 times a raw TCP message (Hypercorn
on the server, httpx on the client); ``benchmarks/suite.py --peer-transport`` measures both.

Wire format: each frame is a 4-byte big-endian length, then that many bytes of payload. A
request's payload is the UTF-8 JSON ``{"m": method, "a": args}``; its reply's is
``{"s": status, "p": payload}`` with the status and payload the HTTP app would answer
(``dispatch`` produces both). With peer authentication (:mod:`trioraft.rpc.auth`; the
server and all its callers must agree on it), raw bytes come ahead of the JSON:

    request payload:  credential (80 bytes) | JSON
                      credential = nonce | head tag over (method "", the JSON's length) |
                      tag over (method "", JSON): the method is in the JSON
    reply payload:    tag (32 bytes) | JSON
                      tag = reply tag over (the request's tag, status 0, JSON): the status
                      is in the JSON; 32 zero bytes on a reply to an unauthenticated request

With TLS, the same frames travel inside the TLS stream.

Invariants:
- A connection carries one call at a time: the server answers each request before reading
  the next. The client keeps a few idle connections per peer, reuses one only if it has
  been idle for less than ``max_idle`` (well below the servers' ``idle_timeout``, so the
  server does not close it under a call), and closes any connection whose call failed or
  was cancelled, since its state is then unknown.
- The server checks every request as the HTTP app does (same routes, same ``dispatch``); a
  malformed request gets a 4xx reply; a frame over ``max_frame_bytes`` gets a 413 and the
  connection is closed (its tail cannot be trusted). With peer authentication, a frame
  without a valid tag gets a 401 and the connection is closed, before any JSON is parsed;
  one whose head tag is wrong for its length, before its body is read.
  No input reaches a handler unchecked; a handler's unexpected exception is answered 500,
  logged, and the connection and the server carry on.
- The server is bounded: at most ``max_connections`` connections at once (others wait in the
  kernel's backlog), of which at most ``max_unproven`` (with peer authentication) have not
  yet sent a frame with a valid tag: past that, the oldest of those is closed. A connection
  is closed when no frame starts within ``idle_timeout`` of the last reply (or of
  connecting, TLS handshake included), or when a frame, or the reply to it, takes over
  ``frame_timeout`` to cross.
- :meth:`TcpTransport.call` never raises for network trouble: it returns ``None``, as it
  does for a reply whose tag does not answer this very request.
"""

from __future__ import annotations

import logging
import math
import struct
import traceback
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

import trio

from .._errors import BadRequest
from .._logging import Throttled, logger
from . import sockio
from .auth import CREDENTIAL_BYTES, TAG_BYTES, PeerAuth
from .codec import dump_json, encode
from .http import (
    INTERNAL_ERROR,
    UNAUTHENTICATED_PEER,
    ErrorLog,
    Route,
    Unproven,
    decode_reply,
    default_error_log,
    dispatch_parsed,
    parse_json,
    remote_address,
    serve_bounded,
)
from .stall import StallClock
from .tls import ClientTls, ServerTls, client_context

T = TypeVar("T")
_LENGTH = struct.Struct(">I")
DEFAULT_MAX_FRAME_BYTES = 64 << 20
#: Peers are few: each keeps a couple of idle connections here, plus one per call in flight.
DEFAULT_MAX_CONNECTIONS = 128
#: A live peer's pooled connection carries a heartbeat at least every 0.1 s, so only
#: connections no peer is using reach this; callers stop reusing theirs well before.
DEFAULT_IDLE_TIMEOUT = 30.0
#: Time for one frame to cross, once started: the largest (64 MiB) needs ~2.2 MB/s.
DEFAULT_FRAME_TIMEOUT = 30.0
DEFAULT_MAX_IDLE = 10.0
#: With peer authentication, connections that have not yet sent a frame with a valid tag:
#: past this many, the oldest is closed. A peer's first frame follows its connect at once,
#: so strangers hold at most these of the ``max_connections`` slots, each with at most the
#: first 64 KiB of a frame in memory (a frame's body is read only after its head tag).
DEFAULT_MAX_UNPROVEN = 16
_IDLE_CONNECTIONS_PER_PEER = 2
_NO_TAG = bytes(TAG_BYTES)
_REFUSAL = (_NO_TAG, dump_json({"s": 401, "p": UNAUTHENTICATED_PEER}))
_NETWORK_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


def _nothing() -> None:
    """Proves nothing: a connection without peer authentication is never unproven."""


class FrameError(Exception):
    """The peer broke the framing: a frame too large, or a connection closed mid-frame."""


class FramedStream:
    """Length-prefixed frames over a connected Trio stream.

    Over a plain socket it reads and writes the socket itself (one reader and one writer at
    a time, through :mod:`trioraft.rpc.sockio`) instead of through ``SocketStream``, whose
    every send and receive ends with a pass of the scheduler even when the socket was
    ready: on a busy leader each such pass delays the reply it just read by a whole batch
    of other tasks. There a call waits (and is cancellable) only when the socket is not
    ready. Over any other stream (TLS), it goes through the stream's own methods.
    """

    def __init__(self, stream: trio.abc.Stream, max_frame_bytes: int) -> None:
        self.stream = stream
        self.max_frame_bytes = max_frame_bytes
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._buffer = bytearray()

    async def send(self, *parts: bytes) -> None:
        """Send one frame whose payload is ``parts`` joined."""
        payload = b"".join((_LENGTH.pack(sum(map(len, parts))), *parts))
        if self._socket is None:
            await self.stream.send_all(payload)
        else:
            await sockio.send_all(self._socket, payload)

    async def receive(self) -> bytes | None:
        """The next frame, or ``None`` if the peer closed cleanly between frames."""
        if not await self.wait_frame():
            return None
        return await self.read_frame()

    async def wait_frame(self) -> bool:
        """Wait for the next frame to start; ``False`` if the peer closed cleanly first."""
        if self._buffer:
            # Bytes that came with the last frame (a peer sending without waiting): let the
            # other tasks run between its frames, as a wait for the socket would.
            await trio.lowlevel.checkpoint()
        return await self._fill(_LENGTH.size)

    async def read_head(self, size: int) -> tuple[int, bytes]:
        """The length of the frame :meth:`wait_frame` saw start, and its first ``size``
        bytes (all of it if shorter); the rest stays to read or to leave unread."""
        length = self._announced_length()
        end = _LENGTH.size + min(size, length)
        await self._fill(end)
        return length, bytes(self._buffer[_LENGTH.size : end])

    async def read_frame(self) -> bytes:
        """The rest of the frame :meth:`wait_frame` saw start."""
        length = self._announced_length()
        await self._fill(_LENGTH.size + length)
        frame = bytes(self._buffer[_LENGTH.size : _LENGTH.size + length])
        del self._buffer[: _LENGTH.size + length]
        return frame

    def _announced_length(self) -> int:
        (length,) = _LENGTH.unpack_from(self._buffer)
        if length > self.max_frame_bytes:
            raise FrameError(f"a frame of {length} bytes; the limit is {self.max_frame_bytes}")
        return length

    async def _fill(self, size: int) -> bool:
        while len(self._buffer) < size:
            want = min(max(65536, size - len(self._buffer)), 1 << 20)
            if self._socket is None:
                data = await self.stream.receive_some(want)
            else:
                data = await sockio.receive_some(self._socket, want)
            if not data:
                if self._buffer:
                    raise FrameError("the connection closed in the middle of a frame")
                return False
            self._buffer += data
            if len(self._buffer) < size and self._socket is not None:
                await trio.lowlevel.checkpoint()  # a long frame must not hold the loop
        return True


async def serve_tcp(
    routes: Mapping[str, Route],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    peer_auth: PeerAuth | None = None,
    tls: ServerTls | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    frame_timeout: float = DEFAULT_FRAME_TIMEOUT,
    max_unproven: int = DEFAULT_MAX_UNPROVEN,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer framed calls to ``routes`` until cancelled; ``task_status`` gets ``tcp://...``
    (``tcp://`` with TLS too: the caller's settings say whether to speak it)."""
    ssl_context = None if tls is None else tls.context()
    sockets = await trio.open_tcp_listeners(port, host=host)
    bound_host, bound_port = sockets[0].socket.getsockname()[:2]
    listeners: list[trio.abc.Listener[Any]] = list(sockets)
    if ssl_context is not None:
        listeners = [trio.SSLListener(s, ssl_context, https_compatible=True) for s in sockets]
    server = _Server(routes, max_frame_bytes, peer_auth, idle_timeout, frame_timeout, max_unproven)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_bounded, server.serve_connection, listeners, max_connections)
            task_status.started(f"tcp://{bound_host}:{bound_port}")
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)


class _Server:
    def __init__(
        self,
        routes: Mapping[str, Route],
        max_frame_bytes: int,
        peer_auth: PeerAuth | None,
        idle_timeout: float,
        frame_timeout: float,
        max_unproven: int = DEFAULT_MAX_UNPROVEN,
    ) -> None:
        self.routes = routes
        self.max_frame_bytes = max_frame_bytes
        self.peer_auth = peer_auth
        self.idle_timeout = idle_timeout
        self.frame_timeout = frame_timeout
        self.log_error = Throttled(logger, logging.ERROR)
        #: Connections yet to send a frame with a valid tag (with peer authentication).
        self._unproven = Unproven(max_unproven)

    def _admit(self, scope: trio.CancelScope) -> Callable[[], None]:
        """Count a new connection as unproven (with peer authentication), closing the
        oldest unproven one past ``max_unproven``; what marks it proven, or gone."""
        return _nothing if self.peer_auth is None else self._unproven.admit(scope)

    async def serve_connection(self, stream: trio.abc.Stream) -> None:
        """Answer the frames of one connection until it closes, breaks, stalls or misbehaves.
        The caller closes ``stream``."""
        framed = FramedStream(stream, self.max_frame_bytes)
        clock = StallClock(self.idle_timeout)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(clock.watch, nursery.cancel_scope)
            prove = self._admit(nursery.cancel_scope)
            try:
                if isinstance(stream, trio.SSLStream):
                    await stream.do_handshake()
                while await framed.wait_frame():
                    clock.restart(self.frame_timeout)
                    if await self._head_is_valid(framed, stream):
                        frame = await framed.read_frame()
                        clock.restart(math.inf)  # a handler is bounded by its own logic
                        reply, keep_open = await self.answer(frame, stream, prove)
                    else:
                        reply, keep_open = _REFUSAL, False  # its body is never read
                    clock.restart(self.frame_timeout)
                    await framed.send(*reply)
                    if not keep_open:
                        break
                    clock.restart(self.idle_timeout)
            except FrameError as exc:
                reply_json = dump_json({"s": 413, "p": {"error": str(exc)}})
                try:
                    await framed.send(*self._unsigned(reply_json))
                except _NETWORK_ERRORS:
                    pass
            except _NETWORK_ERRORS:
                pass  # the caller went away
            finally:
                prove()
            nursery.cancel_scope.cancel()

    async def _head_is_valid(self, framed: FramedStream, stream: trio.abc.Stream) -> bool:
        """Without peer authentication, always; with it, whether the frame starting on
        ``framed`` carries a head tag right for its length (read before its body)."""
        if self.peer_auth is None:
            return True
        frame_bytes, head = await framed.read_head(CREDENTIAL_BYTES)
        if self.peer_auth.check_head(head, "", frame_bytes - CREDENTIAL_BYTES):
            return True
        self.peer_auth.refuse(_remote(stream), "a frame without a valid head tag")
        return False

    async def answer(
        self, frame: bytes, stream: trio.abc.Stream, prove: Callable[[], None] = _nothing
    ) -> tuple[tuple[bytes, ...], bool]:
        """The reply's payload parts for ``frame``, and whether the connection stays open.
        A valid tag proves the connection (``prove``) before the handler runs, so a
        newcomer can no longer close it under the handler."""
        auth = self.peer_auth
        if auth is None:
            return (await _answer_bytes(self.routes, frame, self.log_error),), True
        body = memoryview(frame)[CREDENTIAL_BYTES:]
        request_tag = auth.check_body(frame[:CREDENTIAL_BYTES], "", body)  # its head held
        if request_tag is None:
            auth.refuse(_remote(stream), "a frame without a valid tag")
            return _REFUSAL, False
        prove()
        reply = await _answer_bytes(self.routes, body, self.log_error)
        return (auth.sign_reply(request_tag, 0, reply), reply), True

    def _unsigned(self, reply: bytes) -> tuple[bytes, ...]:
        return (reply,) if self.peer_auth is None else (_NO_TAG, reply)


def _remote(stream: trio.abc.Stream) -> str:
    address = remote_address(stream)
    return "?" if address is None else f"{address[0]}:{address[1]}"


async def _answer(
    routes: Mapping[str, Route],
    frame: bytes | memoryview,
    log_error: ErrorLog = default_error_log,
) -> tuple[int, Any]:
    """The status and payload answering ``frame``; never raises for any input."""
    try:
        request = parse_json(frame)
        if not isinstance(request, dict) or not isinstance(request.get("m"), str):
            raise BadRequest('expected {"m": method, "a": args}')
    except BadRequest as exc:
        return exc.status, {"error": exc.message}
    return await dispatch_parsed(routes, request["m"], request.get("a"), log_error=log_error)


async def _answer_bytes(
    routes: Mapping[str, Route], frame: bytes | memoryview, log_error: ErrorLog
) -> bytes:
    status, payload = await _answer(routes, frame, log_error)
    try:
        return dump_json({"s": status, "p": payload})
    except (TypeError, ValueError):
        log_error("a reply is not JSON:\n%s", traceback.format_exc())
        return dump_json({"s": 500, "p": INTERNAL_ERROR})


def parse_tcp_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "tcp" or not parts.hostname or parts.port is None:
        raise ValueError(f"expected tcp://HOST:PORT, got {url!r}")
    return parts.hostname, parts.port


class TcpTransport:
    """Peers reached over framed TCP at ``tcp://HOST:PORT`` addresses.

    With ``network`` (a :class:`~trioraft.testing.Network`), every call goes through its
    fault plan, as calls through a fault proxy do over HTTP. ``peer_auth`` signs requests
    and checks replies; ``tls`` makes every connection a TLS one, checked as it says.
    """

    def __init__(
        self,
        node_id: str,
        peer_urls: Mapping[str, str],
        *,
        network: Any = None,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        peer_auth: PeerAuth | None = None,
        tls: ClientTls | None = None,
        max_idle: float = DEFAULT_MAX_IDLE,
    ) -> None:
        self.id = node_id
        self._addresses = {peer: parse_tcp_url(url) for peer, url in peer_urls.items()}
        #: Per peer: idle connections, each with the time it went idle.
        self._idle: dict[str, list[tuple[FramedStream, float]]] = {peer: [] for peer in peer_urls}
        self._network = network
        self._max_frame_bytes = max_frame_bytes
        self._peer_auth = peer_auth
        self._ssl_context = None if tls is None else client_context(tls)
        self._max_idle = max_idle
        self._closed = False
        #: Idle connections to peers forgotten since: closed by :meth:`aclose`.
        self._retired: list[tuple[FramedStream, float]] = []

    def check_peer_address(self, address: str) -> None:
        parse_tcp_url(address)

    def set_peer_address(self, peer: str, address: str) -> None:
        """Reach ``peer`` at ``address`` (``tcp://HOST:PORT``) from now on."""
        parsed = parse_tcp_url(address)
        if self._addresses.get(peer) == parsed:
            return
        self.forget_peer(peer)
        self._addresses[peer] = parsed
        self._idle[peer] = []

    def forget_peer(self, peer: str) -> None:
        """Stop reaching ``peer``; its idle connections are closed by :meth:`aclose`."""
        self._addresses.pop(peer, None)
        self._retired.extend(self._idle.pop(peer, []))

    async def call(self, peer: str, method: str, args: Any, reply_type: type[T]) -> T | None:
        if peer not in self._addresses:
            return None  # not (or no longer) a peer
        request = dump_json({"m": method, "a": encode(args)})
        if self._network is None:
            raw = await self._round_trip(peer, request)
        else:
            raw = await self._network.deliver(
                self.id,
                peer,
                lambda: self._round_trip(peer, request),
                len(request),
                lambda r: len(r) if r is not None else 0,
            )
        return None if raw is None else _decode_reply(raw, reply_type)

    async def _round_trip(self, peer: str, request: bytes) -> bytes | memoryview | None:
        """The reply's JSON (checked against its tag, with peer auth), or ``None``."""
        idle = self._idle.setdefault(peer, [])
        connection = None
        while idle:
            candidate, since = idle.pop()
            if trio.current_time() - since < self._max_idle:
                connection = candidate
                break
            await trio.aclose_forcefully(candidate.stream)  # the server may be closing it
        try:
            if connection is None:
                connection = FramedStream(await self._connect(peer), self._max_frame_bytes)
            if self._peer_auth is None:
                await connection.send(request)
            else:
                credential, request_tag = self._peer_auth.sign_request("", request)
                await connection.send(credential, request)
            reply = await connection.receive()
        except (*_NETWORK_ERRORS, FrameError):
            if connection is not None:
                await trio.aclose_forcefully(connection.stream)
            return None
        except BaseException:
            if connection is not None:
                await trio.aclose_forcefully(connection.stream)
            raise
        body: bytes | memoryview | None = reply
        if reply is not None and self._peer_auth is not None:
            body = memoryview(reply)[TAG_BYTES:]
            if not self._peer_auth.check_reply(request_tag, 0, body, reply[:TAG_BYTES]):
                body = None
        if body is None or self._closed or len(idle) >= _IDLE_CONNECTIONS_PER_PEER:
            await trio.aclose_forcefully(connection.stream)
        else:
            idle.append((connection, trio.current_time()))
        return body

    async def _connect(self, peer: str) -> trio.abc.Stream:
        host, port = self._addresses[peer]
        stream = await trio.open_tcp_stream(host, port)
        if self._ssl_context is None:
            return stream
        return trio.SSLStream(
            stream, self._ssl_context, server_hostname=host, https_compatible=True
        )

    async def aclose(self) -> None:
        self._closed = True
        for idle in [*self._idle.values(), self._retired]:
            while idle:
                await trio.aclose_forcefully(idle.pop()[0].stream)


def _decode_reply(raw: bytes | memoryview, reply_type: type[T]) -> T | None:
    try:
        message = parse_json(raw)
    except BadRequest:
        return None
    if not isinstance(message, dict) or message.get("s") != 200:
        return None
    return decode_reply(message.get("p"), reply_type)
