"""A lean HTTP/1.1 client for :class:`~trioraft.rpc.http.RpcClient` over plain ``http://``.

httpx costs about 0.6 ms of CPU per request (2.2-2.7 ms on the loaded benchmark machine),
which is most of what a Python client spends per operation and 30 % of a leader replicating
over HTTP peers. An RPC needs little of HTTP: ``POST`` with a ``Content-Length`` body, a reply
with a ``Content-Length`` body, kept-alive connections. :class:`Pool` does exactly that over
trio sockets: one write of head and body per request, and a strict parser for the reply.
(h11 was measured too: ~0.5 ms per request on the same machine, as much as it would save.)
``https://`` URLs keep httpx (TLS, certificate checks, ALPN).

Invariants:
- Every :meth:`Pool.post` is bounded in time: one deadline covers waiting for a connection
  slot, connecting, sending and reading the whole reply (a server that drips bytes is cut
  off at the deadline, not at each read). It is bounded in memory: a reply head over
  :data:`MAX_HEAD_BYTES`, or a ``Content-Length`` over ``max_reply_bytes``, is refused before
  its body is read; the buffer never holds more than the head, the body and one read.
- At most ``max_connections`` connections to the server are in use at once (a call beyond
  that waits for one within its deadline), and at most ``max_idle`` more lie idle.
- Whatever the server or the network sends, :meth:`Pool.post` returns a well-formed reply
  or ``None``; it raises nothing but the caller's own cancellation. Well-formed means: an
  ``HTTP/1.x`` status line with a final status (200-599), header lines that are
  ``token: value``, exactly one all-digit ``Content-Length`` (there is no framing by closing
  the connection, and ``Transfer-Encoding`` is refused: our servers never chunk an RPC
  reply), and no byte after the body in what has been read.
- A connection goes back to the idle list only after such an ``HTTP/1.1`` reply without
  ``Connection: close`` to a request sent whole (a server may answer before reading all of
  a request, then the rest of it is unsent); a call that failed, timed out or was cancelled
  closes its connection, so no late or stray byte can ever be read as another call's reply.
  An idle connection is taken up again only if it has been idle for less than
  ``keep_alive_for`` (keep it below the server's keep-alive timeout, so the server does not
  close it under a request) and nothing is readable on it (no EOF, no unsolicited bytes);
  otherwise it is closed. A lost call is not retried here: the caller decides.
"""

from __future__ import annotations

import re
import select
from dataclasses import dataclass

import trio

from . import sockio

#: The status line and the header lines of a reply, together, at most.
MAX_HEAD_BYTES = 16 * 1024
#: How long an idle connection may be reused: half the servers' default keep-alive timeout.
DEFAULT_KEEP_ALIVE_FOR = 2.5
DEFAULT_MAX_REPLY_BYTES = 64 << 20
_READ = 65536

_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([2-5][0-9][0-9])(?: [\t\x20-\x7e\x80-\xff]*)?")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class _Malformed(Exception):
    """The reply is not one this client takes (the call is lost)."""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    content: bytes
    #: The value of the header named by :attr:`Pool.tag_header`, if the reply had one.
    tag: str | None


class Pool:
    """Kept-alive HTTP/1.1 connections to one plain-HTTP server (see the module's invariants).

    ``connections_opened`` counts the connections ever opened and :attr:`idle_connections`
    those kept alive now (for tests and metrics).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tag_header: bytes = b"",
        max_connections: int = 64,
        max_idle: int = 16,
        keep_alive_for: float = DEFAULT_KEEP_ALIVE_FOR,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
    ) -> None:
        if max_connections < 1 or max_idle < 0 or max_reply_bytes < 0:
            raise ValueError("max_connections must be ≥ 1, max_idle and max_reply_bytes ≥ 0")
        self.host, self.port = host, port
        self._tag_header = tag_header.lower()
        self._slots = trio.Semaphore(max_connections)
        self._max_idle = max_idle
        self._keep_alive_for = keep_alive_for
        self._max_reply_bytes = max_reply_bytes
        self._idle: list[tuple[trio.SocketStream, float]] = []  # oldest first
        self._closed = False
        self.connections_opened = 0

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    async def post(self, request: bytes, limit: float) -> Reply | None:
        """Send ``request`` (a whole HTTP/1.1 request: head and body) and read its reply;
        ``None`` if no well-formed reply came within ``limit`` seconds."""
        with trio.move_on_after(max(limit, 0.0)):
            # The socket is read and written without a pass of the scheduler when ready
            # (:mod:`trioraft.rpc.sockio`), and a free slot is taken without one too: a call
            # is a checkpoint for cancellation here, and for scheduling when it waits.
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                self._slots.acquire_nowait()
            except trio.WouldBlock:
                await self._slots.acquire()
            try:
                stream = self._take()
                try:
                    if stream is None:
                        stream = await trio.open_tcp_stream(self.host, self.port)
                        self.connections_opened += 1
                    reply, keep = await self._exchange(stream, request)
                except BaseException as exc:
                    if stream is not None:
                        _close(stream)
                    if isinstance(exc, (OSError, trio.BrokenResourceError, _Malformed)):
                        return None
                    raise  # cancellation (ours, by the deadline, or the caller's)
                if keep and not self._closed and len(self._idle) < self._max_idle:
                    self._idle.append((stream, trio.current_time()))
                else:
                    _close(stream)
                return reply
            finally:
                self._slots.release()
        return None

    def _take(self) -> trio.SocketStream | None:
        """An idle connection fit for another request, or ``None``; closes the unfit."""
        idle = self._idle
        if not idle:
            return None
        oldest = trio.current_time() - self._keep_alive_for
        while idle and idle[0][1] <= oldest:
            _close(idle.pop(0)[0])
        while idle:
            stream, _ = idle.pop()
            if not _readable(stream):
                return stream
            _close(stream)  # closed by the server, or unsolicited bytes: unusable either way
        return None

    async def _exchange(self, stream: trio.SocketStream, request: bytes) -> tuple[Reply, bool]:
        sent = True
        sock = stream.socket
        try:
            await sockio.send_all(sock, request)
        except (BrokenPipeError, ConnectionResetError):
            # It may have answered already (a 413 before reading the body): read that, but
            # never reuse the connection, whatever the reply says: part of the request is
            # unsent, and the server would read its next request from the middle of it.
            sent = False
        buffer = bytearray()
        scanned = 0
        while (end := buffer.find(b"\r\n\r\n", scanned)) < 0:
            if len(buffer) > MAX_HEAD_BYTES:
                raise _Malformed("the reply's head is too large")
            scanned = max(0, len(buffer) - 3)
            chunk = await sockio.receive_some(sock, _READ)
            if not chunk:
                raise _Malformed("closed before the reply's head")
            buffer += chunk
        if end > MAX_HEAD_BYTES:
            raise _Malformed("the reply's head is too large")
        status, length, keep, tag = self._parse_head(bytes(buffer[:end]))
        start = end + 4
        need = start + length
        while len(buffer) < need:
            chunk = await sockio.receive_some(sock, _READ)
            if not chunk:
                raise _Malformed("closed in the reply's body")
            buffer += chunk
        if len(buffer) > need:
            raise _Malformed("bytes after the reply")
        return Reply(status, bytes(buffer[start:need]), tag), keep and sent

    def _parse_head(self, head: bytes) -> tuple[int, int, bool, str | None]:
        lines = head.split(b"\r\n")
        status_line = _STATUS_LINE.fullmatch(lines[0])
        if status_line is None:
            raise _Malformed("not an HTTP/1 status line with a final status")
        keep = status_line.group(1) == b"1"
        length: int | None = None
        tag: str | None = None
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or _TOKEN.fullmatch(name) is None or _BAD_VALUE.search(value):
                raise _Malformed("a malformed header line")
            name = name.lower()
            value = value.strip(b" \t")
            if name == b"content-length":
                if length is not None or not value.isdigit() or len(value) > 20:
                    raise _Malformed("a missing, repeated or malformed Content-Length")
                length = int(value)
            elif name == b"transfer-encoding":
                raise _Malformed("Transfer-Encoding is not taken")
            elif name == b"connection":
                if b"close" in (token.strip().lower() for token in value.split(b",")):
                    keep = False
            elif name == self._tag_header:
                if tag is not None:
                    raise _Malformed("a repeated tag header")
                tag = value.decode("latin-1")
        if length is None:
            raise _Malformed("no Content-Length")
        if length > self._max_reply_bytes:
            raise _Malformed("the reply is too large")
        return int(status_line.group(2)), length, keep, tag

    async def aclose(self) -> None:
        """Close the idle connections; those in use are closed when their call ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for stream, _ in idle:
            _close(stream)
        await trio.lowlevel.checkpoint()


def _readable(stream: trio.SocketStream) -> bool:
    """Whether an idle connection has anything to read (EOF, an error, stray bytes)."""
    poller = select.poll()
    poller.register(stream.socket.fileno(), select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))


def _close(stream: trio.SocketStream) -> None:
    stream.socket.close()  # at once, even in a cancelled scope
