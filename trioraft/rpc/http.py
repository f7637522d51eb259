"""RPC over HTTP/JSON: ``POST /<method>`` with a JSON body, answered with a JSON body.

Server side, :func:`make_app` builds a Quart-Trio app from a table of typed :class:`Route`\\ s
and :func:`serve` runs it under Hypercorn in the caller's nursery, reporting its URL through
``task_status`` (so ``port=0`` works). Client side, :class:`RpcClient` is bound to one server
URL and one client id, sent as the ``X-Client-Id`` header on every request.

Invariants:
- A handler only ever sees a fully validated argument message: malformed JSON, a missing or
  mistyped field, an unknown method or a body over ``max_body_bytes`` is answered with a 4xx
  and ``{"error": message}`` before any handler runs, so no input can change server state.
  A handler may itself raise :class:`BadRequest` (before changing anything) for checks the
  types cannot express; any other exception it raises is answered 500
  ``{"error": "internal error"}`` and logged (rate-limited), and the server carries on.
  The one thing that runs on unvalidated input is a route's ``on_arrival``, once a client
  request's head is in and its token checked: it takes no argument and must change no
  state a reply depends on (``KVNode``'s starts a read's heartbeat round).
- With ``peer_auth`` (see :mod:`trioraft.rpc.auth`), a request without a valid tag is
  answered 401 before its body is parsed; with ``client_token``, one without
  ``Authorization: Bearer <token>`` is answered 401 before its body is read. ``GET`` routes
  are open, except a :class:`GetRoute` marked ``private``, which needs the token too.
- Every listener is bounded: at most ``max_connections`` connections at once (beyond that,
  new ones wait in the kernel's backlog, holding no descriptor of ours), of which one
  client address holds at most ``max_connections_per_address`` (its next one is closed at
  once: no one address, however slowly it sends, can take all the slots), and, with
  ``max_unproven``, at most that many that have yet to send a validly tagged peer request
  (the oldest of those is closed for a newcomer; one proven never is); request headers
  must arrive within ``keep_alive_timeout`` of the connection opening or of the previous
  reply, and the body within ``body_timeout`` (else 408); a connection is closed when its
  client takes less than ``SEND_STEP_BYTES`` (64 KiB) of a reply within ``send_timeout``,
  and the reply bytes its clients have yet to take are at most ``max_unsent_bytes``, all
  connections together (past it the connections that took nothing for longest are closed;
  one reply counts for at most a quarter of it). HTTP/1.1
  only: a plain connection that opens with HTTP/2's preface, or asks to upgrade to h2c, is
  closed (HTTP/2's flow control would hold a reply outside these bounds).
  A reply that leaves a request body unread (401, 408, 413, any other error found before
  the body) carries ``Connection: close`` and the connection is then closed, so the client
  never waits on it; so is one whose request said ``Connection: close`` (or HTTP/1.0).
- A client that leaves (its connection's reading ends: a close or a half-close) has the
  handler of its request cancelled. A ``POST`` that answers promptly has its body read in
  its request's own task, not in Quart-Trio's nursery of two (:class:`_PromptPost`); its
  bounds are the same.
- :meth:`RpcClient.call` returns the decoded reply, or ``None`` on any network failure,
  timeout, 408 or 5xx status, undecodable reply or (with ``peer_auth``) a reply whose tag
  is not the answer to this very request; it never raises for those. A refusal of the
  request itself (400, 401, 403, 404, 405, 413, 422) raises :class:`BadRequest`, so a
  client never retries what can only be refused again (``HttpTransport`` maps it to
  ``None``: to Raft, a refused message is a lost one).
"""

from __future__ import annotations

import errno
import hmac
import json
import logging
import math
import ssl
import traceback
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import httpx
import orjson
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.h11 import H2CProtocolRequiredError, H2ProtocolAssumedError
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app
from quart import Response, request
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection
from werkzeug.exceptions import HTTPException, RequestTimeout

from .._errors import BadRequest, StorageFailed
from .._logging import Throttled, logger
from . import sockio
from .auth import AUTH_HEADER, TAG_BYTES, PeerAuth
from .codec import decode, dump_json, encode
from .http1 import DEFAULT_KEEP_ALIVE_FOR, DEFAULT_MAX_REPLY_BYTES, Pool
from .stall import StallClock
from .tls import ClientTls, ServerTls, client_context

T = TypeVar("T")
CLIENT_ID_HEADER = "X-Client-Id"
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_BODY_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 1000
#: A quarter of the client listener's slots: one address (a runaway client, or one that
#: holds connections open by sending slowly) leaves the others three quarters of them.
DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 256
DEFAULT_KEEP_ALIVE_TIMEOUT = 5.0
#: A client that takes less than ``SEND_STEP_BYTES`` of a reply in this long is gone or
#: hostile (2 KiB/s: a slow link is fine).
DEFAULT_SEND_TIMEOUT = 30.0
SEND_STEP_BYTES = 64 << 10
#: Reply bytes a listener holds for clients that have yet to take them, all connections
#: together (a 16 MiB reply to a client that does not read would otherwise pin its memory
#: per connection: 40 connections held a gigabyte). Past it the connections that took
#: nothing for longest are closed (see :class:`Unsent`).
DEFAULT_MAX_UNSENT_BYTES = 64 << 20
INTERNAL_ERROR = {"error": "internal error"}
STORAGE_FAILED = {"error": "this node's storage failed: it is stopping"}
UNAUTHENTICATED_PEER = {"error": "unauthenticated peer message"}
UNAUTHENTICATED_CLIENT = {"error": "missing or wrong client token"}
#: Where a connection's state (the ASGI scope's ``state``) holds what marks the connection
#: proven once a request on it carries a valid peer tag (``serve(max_unproven=)``).
PROVE_STATE_KEY = "trioraft.prove"
#: Where a connection's state holds its :class:`_InFlight` requests.
IN_FLIGHT_STATE_KEY = "trioraft.in_flight"
#: Where a request's scope keeps what its route's ``on_arrival`` returned.
ARRIVAL_SCOPE_KEY = "trioraft.arrived"

#: Logs a handler's unexpected exception with its traceback (rate-limited per server).
ErrorLog = Callable[..., None]


@dataclass(frozen=True)
class Route:
    """One RPC method: the argument message type and the handler that answers it.

    With ``on_arrival``, the client app calls it as a request for the method arrives
    (its head parsed, its client token checked, its body not yet read) and the handler is
    called as ``handler(args, arrived)`` with what it returned (``None`` for a request
    that came another way): for work that can overlap the request's parsing."""

    args: type
    handler: Callable[..., Awaitable[Any]]
    on_arrival: Callable[[], Any] | None = None
    #: The handler may wait long for something to happen (a watch's long poll): its
    #: requests go Quart-Trio's own way, which cancels the handler when the client leaves.
    long_poll: bool = False


@dataclass(frozen=True)
class StreamRoute:
    """A ``POST /<method>`` answered by a stream: the handler yields messages, each sent as
    one line of JSON (``application/x-ndjson``) as soon as it is ready. The handler bounds
    the stream's life (a client reconnects to go on); a client that goes away cancels it."""

    args: type
    handler: Callable[[Any], AsyncIterator[Any]]


@dataclass(frozen=True)
class GetRoute:
    """A ``GET /<name>`` page: ``handler()`` builds the whole response (see
    :func:`json_response` and :func:`bytes_response`). A ``private`` page requires the
    client token when the app has one; the others are open, like ``/status``."""

    handler: Callable[[], Awaitable[Response]]
    private: bool = False


def parse_json(body: bytes | bytearray | memoryview) -> Any:
    """Parse a UTF-8 request body, raising :class:`BadRequest` on anything that is not JSON.

    orjson parses it, unless it holds a run of 19 digits or more (orjson reads an integer
    past 64 bits as a float); a body orjson refuses (a lone surrogate's escape) or does not
    get is parsed by the standard library, so exactly what that parser takes is taken, as
    the same values. Neither takes NaN or Infinity."""
    if not isinstance(body, bytes | bytearray):
        body = bytes(body)
    if _LONG_DIGITS not in body.translate(_DIGITS_AS_ZEROS):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    try:
        return _JSON.decode(str(body, "utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BadRequest(f"malformed JSON: {exc}") from None


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


#: Digits enough to be an integer orjson cannot hold (it reads those as floats), once every
#: digit is a zero: a translation and a substring search cost ~1 ms a MiB, a regular
#: expression ~20.
_DIGITS_AS_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGITS = b"0" * 19
#: One decoder for every body (``json.loads`` with an option builds a new one per call).
_JSON = json.JSONDecoder(parse_constant=_reject_constant)

#: Where unexpected handler exceptions go when the caller names no log of its own.
default_error_log: ErrorLog = Throttled(logger, logging.ERROR)


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(dump_json(payload), status=status, content_type="application/json")


def bytes_response(
    body: bytes, content_type: str, headers: Mapping[str, str] | None = None
) -> Response:
    """A 200 response of ``body`` as it is (with its length)."""
    return Response(body, 200, dict(headers or {}), content_type=content_type)


async def dispatch(
    routes: Mapping[str, Route],
    method: str,
    body: bytes,
    *,
    log_error: ErrorLog = default_error_log,
    arrived: Any = None,
) -> tuple[int, Any]:
    """Answer one call: validate ``body`` for ``method`` and run its handler (with
    ``arrived``, what the route's ``on_arrival`` returned, if it has one).

    Returns the HTTP status and the JSON-ready payload (the reply, or ``{"error": ...}``).
    Never raises for any input, nor for a handler's exception (500, logged to ``log_error``).
    """
    try:
        data = parse_json(body)
    except BadRequest as exc:
        if method not in routes:
            return 404, {"error": f"unknown method {method!r}"}
        return exc.status, {"error": exc.message}
    return await dispatch_parsed(routes, method, data, log_error=log_error, arrived=arrived)


async def dispatch_parsed(
    routes: Mapping[str, Route],
    method: str,
    data: Any,
    *,
    log_error: ErrorLog = default_error_log,
    arrived: Any = None,
) -> tuple[int, Any]:
    """:func:`dispatch` for an already parsed JSON body."""
    route = routes.get(method)
    if route is None:
        return 404, {"error": f"unknown method {method!r}"}
    try:
        args = decode(route.args, data)
        if route.on_arrival is None:
            reply = await route.handler(args)
        else:
            reply = await route.handler(args, arrived)
        return 200, encode(reply)
    except BadRequest as exc:
        return exc.status, {"error": exc.message}
    except StorageFailed:
        return 503, STORAGE_FAILED  # the node logged it once, and is stopping
    except Exception:
        log_error("the handler of %r failed:\n%s", method, traceback.format_exc())
        return 500, INTERNAL_ERROR


def render(status: int, payload: Any, log_error: ErrorLog = default_error_log) -> tuple[int, bytes]:
    """``payload`` as a JSON body; a 500 if it cannot be one (a handler's bad reply)."""
    try:
        return status, dump_json(payload)
    except (TypeError, ValueError):
        log_error("a reply is not JSON:\n%s", traceback.format_exc())
        return 500, dump_json(INTERNAL_ERROR)


def decode_reply(data: Any, reply_type: type[T]) -> T | None:
    """A parsed reply as ``reply_type``, or ``None`` if it does not fit."""
    try:
        return decode(reply_type, data)
    except BadRequest:
        return None


def unhex(value: str | None) -> bytes | None:
    """The bytes of a hex header value, or ``None`` if it is missing or not hex."""
    if value is None:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


def make_app(
    routes: Mapping[str, Route],
    *,
    name: str = "trioraft",
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    status: Callable[[], Any] | None = None,
    peer_auth: PeerAuth | None = None,
    client_token: str | None = None,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    peer_methods: Collection[str] | None = None,
    get_routes: Mapping[str, GetRoute] | None = None,
    stream_routes: Mapping[str, StreamRoute] | None = None,
) -> QuartTrio:
    """A Quart-Trio app answering ``POST /<method>`` for every route in ``routes``.

    ``status``, if given, answers ``GET /status`` with its JSON-ready result, and each of
    ``get_routes`` answers ``GET /<name>``. ``peer_auth``
    requires a peer tag on every ``POST``, ``client_token`` a bearer token; with
    ``peer_methods`` (for an app serving peers and clients at once), the tag is required on
    those methods only and the token on the others only. ``stream_routes`` answer with a
    stream of JSON lines (client methods: never with peer authentication).
    """
    if client_token is not None and not header_safe(client_token):
        raise ValueError("the client token must be non-empty printable ASCII without spaces")
    app = _App(name)
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    app.config["BODY_TIMEOUT"] = body_timeout
    log_error = Throttled(logger, logging.ERROR)
    log_refused_client = Throttled(logger)
    bearer = None if client_token is None else f"Bearer {client_token}".encode()
    peers_only = None if peer_methods is None else frozenset(peer_methods)
    pages = dict(get_routes or {})
    streams = dict(stream_routes or {})
    if streams.keys() & routes.keys():
        raise ValueError(f"methods both streamed and not: {sorted(streams.keys() & routes.keys())}")
    if status is not None and "status" in pages:
        raise ValueError("GET /status is given twice: as status and in get_routes")

    def has_token(headers: Iterable[tuple[bytes, bytes]]) -> bool:
        """Whether raw ``headers`` (an ASGI scope's) carry the client token, if one is set."""
        if bearer is None:
            return True
        given = next((value for name, value in headers if name == b"authorization"), b"")
        return hmac.compare_digest(given, bearer)

    def client_refused() -> Response | None:
        """The 401 for a request without the client token, or ``None`` if it has it."""
        if has_token(request.scope["headers"]):
            return None
        log_refused_client("refused a client request from %s", request.remote_addr)
        return _refusal(UNAUTHENTICATED_CLIENT, {"WWW-Authenticate": "Bearer"})

    async def answer(method: str, body: bytes, arrived: Any = None) -> tuple[int, bytes]:
        status, payload = await dispatch(routes, method, body, log_error=log_error, arrived=arrived)
        return render(status, payload, log_error)

    async def answer_peer(auth: PeerAuth, method: str) -> Response:
        credential = unhex(request.headers.get(AUTH_HEADER))
        length = request.content_length
        if credential is None or length is None or not auth.check_head(credential, method, length):
            # Refused before the body is read: a stranger cannot make the node hold one.
            auth.refuse(request.remote_addr, f"no valid {AUTH_HEADER} header on {method!r}")
            return _refusal(UNAUTHENTICATED_PEER)
        body = await request.get_data(cache=False)
        request_tag = auth.check_body(credential, method, body)
        if request_tag is None:
            auth.refuse(request.remote_addr, f"a wrong tag on {method!r}")
            return _refusal(UNAUTHENTICATED_PEER)
        prove = request.scope.get("state", {}).get(PROVE_STATE_KEY)
        if prove is not None:
            prove()  # before the handler runs: a newcomer can no longer close it under it
        status, content = await answer(method, body)
        tag = auth.sign_reply(request_tag, status, content)
        return Response(content, status, {AUTH_HEADER: tag.hex()}, content_type="application/json")

    async def answer_stream(stream: StreamRoute, body: bytes) -> Response:
        try:
            args = decode(stream.args, parse_json(body))
            messages = stream.handler(args)
        except BadRequest as exc:
            return json_response({"error": exc.message}, exc.status)

        async def lines() -> AsyncIterator[bytes]:
            async with aclosing(messages):
                try:
                    async for message in messages:
                        yield dump_json(encode(message)) + b"\n"
                except Exception:
                    # The reply is under way: cut short, it tells the client something
                    # broke; the log (Hypercorn's own is off) tells the operator what.
                    log_error("a stream's handler failed:\n%s", traceback.format_exc())
                    raise

        response = Response(lines(), 200, content_type="application/x-ndjson")
        response.timeout = None  # the handler bounds the stream
        return response

    def tag_checked(method: str) -> bool:
        """Whether a request for ``method`` must carry a peer tag (checked before its body)."""
        return peer_auth is not None and (peers_only is None or method in peers_only)

    def token_checked(method: str) -> bool:
        """Whether a request for ``method`` must carry the client token (checked before its
        body)."""
        return bearer is not None and (peers_only is None or method not in peers_only)

    @app.post("/<method>")
    async def post(method: str) -> Response:
        if token_checked(method):
            refusal = client_refused()
            if refusal is not None:
                return refusal
        if peer_auth is not None and tag_checked(method):
            return await answer_peer(peer_auth, method)
        stream = streams.get(method)
        if stream is not None:
            return await answer_stream(stream, await request.get_data(cache=False))
        arrived = request.scope.get(ARRIVAL_SCOPE_KEY)
        status, content = await answer(method, await _request_body(), arrived)
        return Response(content, status, content_type="application/json")

    # A request whose body may be read before the view runs: not a long poll, not one whose
    # peer tag is checked before its body, and, where the token is, one that carries it.
    prompt = {f"/{m}" for m, route in routes.items() if not (route.long_poll or tag_checked(m))}
    tokened = {f"/{m}" for m in routes if token_checked(m)}

    def read_first(scope: Any) -> bool:  # see _App
        path = scope["path"]
        return path in prompt and (path not in tokened or has_token(scope["headers"]))

    app.read_first = read_first

    arriving = {name: route.on_arrival for name, route in routes.items() if route.on_arrival}
    if peer_auth is not None:  # peer methods never have it: their tag is checked first
        arriving = {m: f for m, f in arriving.items() if peers_only and m not in peers_only}
    if arriving:
        inner = app.asgi_app

        async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
            # Hypercorn calls the app once a request's head is parsed: ~0.5 ms (on this
            # stack, here) before Quart's view starts and reads the body.
            if scope["type"] == "http" and scope["method"] == "POST":
                on_arrival = arriving.get(scope["path"][1:])
                if on_arrival is not None and has_token(scope["headers"]):
                    scope[ARRIVAL_SCOPE_KEY] = on_arrival()
            await inner(scope, receive, send)

        app.asgi_app = asgi_app  # type: ignore[method-assign]

    if status is not None:

        @app.get("/status")
        async def get_status() -> Response:
            return json_response(status())

    def page_view(page: GetRoute) -> Callable[[], Awaitable[Response]]:
        async def view() -> Response:
            if page.private:
                refusal = client_refused()
                if refusal is not None:
                    return refusal
            return await page.handler()

        return view

    for name, page in pages.items():
        app.add_url_rule(f"/{name}", f"get_{name}", page_view(page), methods=["GET"])

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        error = json_response({"error": exc.description or exc.name}, exc.code or 500)
        return _closing(error)

    @app.errorhandler(Exception)  # found before Quart's own handling, which logs elsewhere
    async def internal_error(exc: Exception) -> Response:
        trace = "".join(traceback.format_exception(exc))
        log_error("%s %s failed:\n%s", request.method, request.path, trace)
        return _closing(json_response(INTERNAL_ERROR, 500))

    return app


async def _request_body() -> bytes:
    """The current request's body: as it is when :class:`_PromptPost` read it all (without
    ``get_data``'s cancel scope and pass of the scheduler), else read the usual way."""
    body = request.body
    if body._must_raise is None and body._complete.is_set():
        data = bytes(body._data)
        body.clear()  # as get_data(cache=False) does: one copy of the body, not two
        return data
    return await request.get_data(cache=False)


class _PromptPost(TrioASGIHTTPConnection):
    """One HTTP request to an :class:`_App`. A ``POST`` to a method that answers promptly,
    on a connection :func:`serve` runs, has its body read before the view runs, all in the
    request's own task; Quart-Trio's way starts a nursery of two tasks (one reads the body
    and watches for the client leaving, one runs the view), a third of Quart's ~0.5 ms of
    CPU per request here. Everything else (pages, streams, long polls) goes that way.

    The same bounds hold: a body over ``MAX_CONTENT_LENGTH`` is refused 413, one that takes
    longer than ``BODY_TIMEOUT`` 408 (both by the view, through the body's ``_must_raise``,
    which Quart provides for ASGI code to hand it errors, and Quart-Trio's way from there),
    a reply must leave within ``RESPONSE_TIMEOUT``, and a client that leaves has the view
    cancelled, by the connection (see :class:`_InFlight`)."""

    app: _App

    async def __call__(self, receive: Any, send: Any) -> None:
        scope = self.scope
        in_flight = scope.get("state", {}).get(IN_FLIGHT_STATE_KEY)
        if in_flight is None or scope["method"] != "POST" or not self.app.read_first(scope):
            await super().__call__(receive, send)
            return
        request = self._create_request_from_scope(send)
        body = request.body
        with trio.move_on_after(self.app.config["BODY_TIMEOUT"]) as reading:
            while body._must_raise is None and not body._complete.is_set():
                message = await receive()
                if message["type"] != "http.request":
                    return  # http.disconnect: no one to answer
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body.set_complete()
        if reading.cancelled_caught and body._must_raise is None:
            body._must_raise = RequestTimeout()
            body.set_complete()
        if body._must_raise is not None:
            # Refused (413, 408) with the body maybe still coming: Quart-Trio's way, whose
            # reader takes it in while the refusal is sent. (Left unread, it filled
            # Hypercorn's queue of 10 pieces, and the reply's last step waited on that.)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.handle_messages, nursery, request, receive)
                nursery.start_soon(self.handle_request, nursery, request, send)
            return
        # A scope of its own: a deadline that passed while the body's last piece was
        # handed over (cancel called, not yet delivered) would cut the view at its first
        # checkpoint.
        with in_flight.handling() as handling:
            if handling.cancel_called:
                return
            response = await self.app.handle_request(request)
            timeout = getattr(response, "timeout", ...)
            if timeout is ...:
                timeout = self.app.config["RESPONSE_TIMEOUT"]
            if timeout is not None:  # Quart's bound on sending the reply
                handling.deadline = trio.current_time() + timeout
            await self._send_response(send, response)


class _InFlight:
    """The prompt requests (:class:`_PromptPost`) a connection is handling: cancelled when
    its client is gone, as Quart-Trio's reader task does on ``http.disconnect``. Gone means
    the connection's reading ended: a reset, a close, or a half-close (a client that shuts
    its sending side after its request), which Go's ``net/http`` (etcd's gateway) also
    takes for a client gone; a request that arrives after it is not run at all."""

    def __init__(self) -> None:
        self.gone = False
        self._handling: set[trio.CancelScope] = set()

    @contextmanager
    def handling(self) -> Iterator[trio.CancelScope]:
        with trio.CancelScope() as scope:
            if self.gone:
                scope.cancel()
            self._handling.add(scope)
            try:
                yield scope
            finally:
                self._handling.discard(scope)

    def client_gone(self) -> None:
        self.gone = True
        for scope in self._handling:
            scope.cancel()


class _App(QuartTrio):
    """The Quart-Trio app :func:`make_app` builds: a ``POST`` for which ``read_first``
    holds is handled by :class:`_PromptPost`."""

    asgi_http_class = _PromptPost
    #: Whether a ``POST`` (its ASGI scope) may have its body read before its view runs: it
    #: answers promptly, and nothing about it is refused before its body is read.
    read_first: Callable[[Any], bool]


def _refusal(payload: dict[str, str], headers: Mapping[str, str] | None = None) -> Response:
    response = json_response(payload, 401)
    response.headers.update(headers or {})
    return _closing(response)


def _closing(response: Response) -> Response:
    """``response`` marked as the connection's last: the request body may be left unread,
    so the connection cannot carry another request. (HTTP/2 has no such header and needs
    none: its streams end on their own.)"""
    if request.http_version.startswith("1"):
        response.headers["Connection"] = "close"
    return response


def header_safe(token: str) -> bool:
    """Whether ``token`` can be sent as a bearer token: printable ASCII without spaces."""
    return bool(token) and token.isascii() and token.isprintable() and " " not in token


async def serve(
    app: QuartTrio,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    tls: ServerTls | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    max_connections_per_address: int | None = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
    max_unproven: int | None = None,
    keep_alive_timeout: float = DEFAULT_KEEP_ALIVE_TIMEOUT,
    send_timeout: float = DEFAULT_SEND_TIMEOUT,
    max_unsent_bytes: int = DEFAULT_MAX_UNSENT_BYTES,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` with Hypercorn until cancelled; ``task_status`` gets the bound URL.

    At most ``max_connections`` connections are served at once, at most
    ``max_connections_per_address`` of them from one client address (``None``: no such
    bound; see :func:`serve_bounded`), and, for an app with ``peer_auth``, at most
    ``max_unproven`` (if given) that have yet to send a request with a valid peer tag:
    past that the oldest of those is closed (see :class:`Unproven`); an idle one (no request
    headers) is closed after ``keep_alive_timeout``, as is a TLS handshake not done by then,
    and one whose client takes less than 64 KiB of a reply within ``send_timeout``; while
    the replies waiting for their clients pass ``max_unsent_bytes`` in all, the connections
    that took nothing for longest are closed (see :class:`Unsent`).
    With ``tls``, the URL is ``https://`` (and with ``tls.ca_file``, clients need a
    certificate signed by it).

    Hypercorn's own loop (``hypercorn.trio.serve``) accepts without limit, so its parts are
    assembled here around a listener that stops accepting while all slots are taken.
    """
    config = HypercornConfig()
    config.accesslog = None
    config.errorlog = None
    config.loglevel = "WARNING"
    config.graceful_timeout = 0
    config.keep_alive_timeout = keep_alive_timeout
    config.ssl_handshake_timeout = keep_alive_timeout
    config.alpn_protocols = ["http/1.1"]  # error replies close connections the HTTP/1 way
    # (Plain connections that would switch to HTTP/2 are closed: see _Connection.)
    if tls is not None:
        config.certfile, config.keyfile = tls.cert_file, tls.key_file
        if tls.ca_file is not None:
            config.ca_certs = tls.ca_file
            config.verify_mode = ssl.CERT_REQUIRED
    ssl_context = config.create_ssl_context()
    sockets = await trio.open_tcp_listeners(port, host=host)
    url = _url("https" if tls else "http", sockets[0].socket)
    listeners: list[trio.abc.Listener[Any]] = list(sockets)
    if ssl_context is not None:
        listeners = [trio.SSLListener(s, ssl_context, https_compatible=True) for s in sockets]
    asgi = wrap_app(app, config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(asgi, config, lifespan_state)

    unproven = None if max_unproven is None else Unproven(max_unproven)
    unsent = Unsent(max_unsent_bytes)

    async def connection(stream: trio.abc.Stream) -> None:
        state = ConnectionState(lifespan_state.copy())
        in_flight = state[IN_FLIGHT_STATE_KEY] = _InFlight()  # type: ignore[literal-required]
        with trio.CancelScope() as scope:
            prove = None
            if unproven is not None:
                prove = state[PROVE_STATE_KEY] = unproven.admit(scope)  # type: ignore[literal-required]
            try:
                await _Connection(
                    asgi, config, context, state, stream,  # type: ignore[arg-type]
                    send_timeout=send_timeout, unsent=unsent, in_flight=in_flight,
                )  # fmt: skip
            finally:
                if prove is not None:
                    prove()  # the connection is gone: no longer counted

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(lifespan.handle_lifespan)
            await lifespan.wait_for_startup()
            await nursery.start(
                partial(serve_bounded, max_per_address=max_connections_per_address),
                connection,
                listeners,
                max_connections,
            )
            task_status.started(url)
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)


class _Connection(TCPServer):
    """Hypercorn's connection, with two of its costs per request taken out and a bound on
    the time a reply may take to leave.

    - Each piece of a reply (head, body, end) went through a lock, a shielded cancel scope
      and a socket send that ends in a pass of the scheduler: six passes per reply. Over a
      plain socket, a piece that no other send is writing ahead of is written on the spot
      (with no wait, nothing can cancel it halfway), and only what the socket does not take
      at once waits, under Hypercorn's lock. An empty piece (the end of a reply whose length
      was given) is not sent at all.
    - The idle timer was a task of its own, stopped at each request and started anew after
      each reply (a spawn and a few passes of the scheduler per request), and in Hypercorn
      0.18 it never closed a connection after that connection's first request: here it is
      one watcher per connection on a :class:`~trioraft.rpc.stall.StallClock`.
    - Hypercorn waited without limit for a client to take a reply (shielded): a client that
      stops reading held its connection for good. One that takes less than
      ``SEND_STEP_BYTES`` within ``send_timeout`` loses its connection, and the bytes all
      connections wait to send are bounded (:class:`Unsent`).
    - Hypercorn switched to HTTP/2 for a plain connection that opened with its preface or
      asked for an h2c upgrade; there a client that grants no flow-control window holds its
      reply in Hypercorn, beyond both bounds above. Such a connection is closed.

    Together the first two halve the scheduler's passes per request (23 to 12 for a small
    POST).
    """

    def __init__(
        self, *args: Any, send_timeout: float, unsent: Unsent, in_flight: _InFlight
    ) -> None:
        super().__init__(*args)
        self._in_flight = in_flight
        self.idle_task = _IdleTimer(self, self.config.keep_alive_timeout)  # type: ignore[assignment]
        self._socket = self.stream.socket if isinstance(self.stream, trio.SocketStream) else None
        self._send_timeout = send_timeout
        self._unsent = unsent

    async def protocol_send(self, event: Event) -> None:
        if type(event) is Closed:
            # Hypercorn closes a connection whose reply said ``Connection: close`` (or that
            # left the request's body unread: a 413, a 408) from the task sending the reply,
            # and quart-trio cancels that task as the request ends or is reported
            # disconnected: a close cut short left the connection open for good, answering
            # nothing, its idle timer stopped.
            with trio.CancelScope(shield=True):
                await super().protocol_send(event)
            return
        if type(event) is not RawData:
            await super().protocol_send(event)
            return
        data = event.data
        if self._socket is not None and not self.send_lock.locked():
            try:
                written = sockio.write_now(self._socket, data) if data else 0
            except OSError:
                await self.protocol.handle(Closed())  # as Hypercorn does for a broken stream
                return
            data = data[written:]
        if data:
            await self._send_waiting(data)

    async def _send_waiting(self, data: bytes) -> None:
        """Send ``data`` once the sends ahead of it are done, each ``SEND_STEP_BYTES`` of
        it within ``send_timeout`` (a slow client is fine, one that stalls is not)."""
        async with self.send_lock:
            with trio.CancelScope(shield=True):
                for evicted in self._unsent.wait(self, len(data)):
                    await trio.aclose_forcefully(evicted.stream)
            try:
                await self._send_steps(memoryview(data))
            except trio.Cancelled:
                # Hypercorn shields its sends instead: a reply cut halfway would leave the
                # client reading the next one from its middle. A reply given up (a response
                # timeout, a client gone) can never be finished, so its connection is
                # closed, at once rather than once a stalled client's send timeout passes.
                await trio.aclose_forcefully(self.stream)
                raise
            finally:
                self._unsent.done(self)

    async def _send_steps(self, view: memoryview) -> None:
        for start in range(0, len(view), SEND_STEP_BYTES):
            with trio.move_on_after(self._send_timeout) as bound:
                try:
                    await self.stream.send_all(view[start : start + SEND_STEP_BYTES])
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    await self.protocol.handle(Closed())
                    return
            if bound.cancelled_caught:
                await trio.aclose_forcefully(self.stream)
                await self.protocol.handle(Closed())
                return
            self._unsent.progressed(self, len(view) - start - SEND_STEP_BYTES)

    async def _read_data(self) -> None:
        wrapper = self.protocol
        wrapper.protocol = _Http1Only(wrapper.protocol, self.stream)  # type: ignore[assignment]
        try:
            if self._socket is None or self.config.read_timeout is not None:
                await super()._read_data()
            else:
                await self._read_socket(self._socket)
        finally:
            self.idle_task.close()  # the connection is over: so is its idle timer
            self._in_flight.client_gone()

    async def _read_socket(self, sock: trio.socket.SocketType) -> None:
        """Hypercorn's read loop over a plain socket and without a read timeout (ours: the
        idle timer bounds the wait), less its pass of the scheduler after each read and its
        cancel scope per read (:mod:`trioraft.rpc.sockio`)."""
        while True:
            try:
                data = await sockio.receive_some(sock, MAX_RECV)
            except (OSError, trio.ClosedResourceError, trio.BrokenResourceError):
                break  # reset by the client, or closed here (idle, a stalled reply)
            await self.protocol.handle(RawData(data))
            if not data:
                break
        await self.protocol.handle(Closed())


class _Http1Only:
    """The HTTP/1.1 protocol of a connection, which Hypercorn would switch to HTTP/2 when
    the client opens with HTTP/2's preface or asks for an h2c upgrade: the connection is
    closed instead (see :class:`_Connection`)."""

    def __init__(self, protocol: Any, stream: trio.abc.Stream) -> None:
        self._protocol = protocol
        self._stream = stream

    async def handle(self, event: Event) -> None:
        try:
            await self._protocol.handle(event)
        except (H2ProtocolAssumedError, H2CProtocolRequiredError):
            await trio.aclose_forcefully(self._stream)


class Unsent:
    """The reply bytes a listener's connections wait to send, bounded in all: a connection
    that must wait to send bytes past ``limit`` closes first those whose clients took
    nothing for longest (a client reading a large reply steadily keeps its place; one
    that stopped reading loses it). One reply counts for at most a quarter of the limit,
    so a reply larger than it (a backup) neither closes every other waiting connection
    nor is closed for any small one; at most four such stalled replies are kept. Pure
    bookkeeping: the caller closes the connections :meth:`wait` names."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.most_per_reply = max(1, limit // 4)
        self.total = 0
        #: Connection -> the bytes it is counted for, those that took nothing for longest
        #: first.
        self._waiting: dict[Any, int] = {}

    def wait(self, connection: Any, n: int) -> list[Any]:
        """``connection`` waits to send ``n`` bytes; the connections to close for them."""
        counted = min(n, self.most_per_reply)
        evicted = []
        while self._waiting and self.total + counted > self.limit:
            stalest = next(iter(self._waiting))
            self.total -= self._waiting.pop(stalest)
            evicted.append(stalest)
        self._waiting[connection] = counted
        self.total += counted
        return evicted

    def progressed(self, connection: Any, left: int) -> None:
        """Its client took a step of ``connection``'s reply; ``left`` bytes remain."""
        counted = self._waiting.pop(connection, None)
        if counted is not None:  # (None: closed for room meanwhile)
            now = min(max(left, 0), self.most_per_reply)
            self._waiting[connection] = now  # to the back: it took something just now
            self.total += now - counted

    def done(self, connection: Any) -> None:
        """``connection`` sent its bytes, or gave up (nothing, if it was closed for room)."""
        self.total -= self._waiting.pop(connection, 0)


class _IdleTimer:
    """Hypercorn's idle timer, with the interface of the task it replaces (``restart`` at
    the connection's start and after each reply, ``stop`` when a request begins): the
    connection is closed once it lies idle for ``timeout``. Hypercorn's own also closed
    idle connections at a graceful shutdown; ``serve`` has none (it is cancelled)."""

    def __init__(self, connection: _Connection, timeout: float) -> None:
        self._connection = connection
        self._timeout = timeout
        self._clock = StallClock(timeout)
        self._watching: trio.CancelScope | None = None

    async def restart(self, task_group: Any, action: object) -> None:
        self._clock.restart(self._timeout)
        if self._watching is None:
            self._watching = trio.CancelScope()
            task_group.spawn(self._watch, self._watching)

    async def stop(self) -> None:
        self._clock.restart(math.inf)

    def close(self) -> None:
        if self._watching is not None:
            self._watching.cancel()

    async def _watch(self, scope: trio.CancelScope) -> None:
        with scope:
            await self._clock.expired()
            with trio.CancelScope(shield=True):
                await self._connection._initiate_server_close()


def _url(scheme: str, sock: trio.socket.SocketType) -> str:
    host, port = sock.getsockname()[:2]
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


_ACCEPT_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_log_accept_error = Throttled(logger, logging.ERROR)
_log_connection_error = Throttled(logger, logging.ERROR)
_log_address_full = Throttled(logger)


class Unproven:
    """The connections of a peer listener that have yet to prove their sender (a message
    with a valid peer tag), oldest first: at most ``limit`` at once; admitting one more
    cancels the oldest one's scope (closing it). Each is known by the number of its
    arrival, never by object identity."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("max_unproven must be at least 1")
        self.limit = limit
        self._scopes: dict[int, trio.CancelScope] = {}
        self._arrivals = 0

    def admit(self, scope: trio.CancelScope) -> Callable[[], None]:
        """Count a new connection (cancelled through ``scope``) as unproven; what to call
        once it proved its sender, or is gone (no newcomer closes it then; calling it again
        does nothing)."""
        self._arrivals += 1
        self._scopes[self._arrivals] = scope
        if len(self._scopes) > self.limit:
            self._scopes.pop(next(iter(self._scopes))).cancel()
        return partial(self._scopes.pop, self._arrivals, None)


async def serve_bounded(
    handler: Callable[[Any], Awaitable[object]],
    listeners: Sequence[trio.abc.Listener[Any]],
    max_connections: int,
    *,
    max_per_address: int | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``handler(stream)`` on each connection accepted from ``listeners``, at most
    ``max_connections`` at once, until cancelled.

    At the limit nothing more is accepted: new connections wait in the kernel's backlog
    (and beyond it, their SYNs are dropped and retried by the client), using no descriptor
    here. With ``max_per_address``, a connection from an address that already holds that
    many is closed as soon as it is accepted (logged, rate-limited): the backlog cannot
    tell addresses apart, so waiting there would hold up everyone else's. A handler's
    unexpected exception is logged and ends its connection only. Each stream is closed
    when its handler returns.
    """
    if max_connections < 1:
        raise ValueError("max_connections must be at least 1")
    if max_per_address is not None and max_per_address < 1:
        raise ValueError("max_per_address must be at least 1")
    slots = trio.Semaphore(max_connections)
    #: Connections open per client address (only addresses with one, so at most
    #: ``max_connections`` entries).
    per_address: dict[str, int] = {}

    async def run(stream: trio.abc.AsyncResource, address: str | None) -> None:
        try:
            await handler(stream)
        except Exception:
            _log_connection_error("a connection's handler failed:\n%s", traceback.format_exc())
        finally:
            if address is not None:
                if per_address[address] == 1:
                    del per_address[address]
                else:
                    per_address[address] -= 1
            slots.release()
            await trio.aclose_forcefully(stream)

    async def accept(listener: trio.abc.Listener[Any], nursery: trio.Nursery) -> None:
        async with listener:
            await accept_from(listener, nursery)

    async def accept_from(listener: trio.abc.Listener[Any], nursery: trio.Nursery) -> None:
        while True:
            await slots.acquire()
            try:
                stream = await listener.accept()
            except OSError as exc:
                slots.release()
                if exc.errno not in _ACCEPT_RESOURCE_ERRORS:
                    raise
                _log_accept_error("cannot accept a connection: %s; retrying", exc)
                await trio.sleep(0.1)
                continue
            except BaseException:
                slots.release()
                raise
            address = None
            if max_per_address is not None:
                address = (remote_address(stream) or ("?", 0))[0]
                held = per_address.get(address, 0)
                if held >= max_per_address:
                    slots.release()
                    _log_address_full(
                        "closed a connection from %s: it holds %d already (the most one "
                        "address may)",
                        address,
                        held,
                    )
                    await trio.aclose_forcefully(stream)
                    continue
                per_address[address] = held + 1
            nursery.start_soon(run, stream, address)

    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(accept, listener, nursery)
        task_status.started()


def remote_address(stream: trio.abc.Stream) -> tuple[str, int] | None:
    """The (host, port) a connection comes from, through any TLS layers; ``None`` if the
    stream has no socket or the socket no peer any more."""
    try:
        while not isinstance(stream, trio.SocketStream):
            stream = stream.transport_stream  # type: ignore[attr-defined]
        host, port = stream.socket.getpeername()[:2]
    except (AttributeError, OSError):
        return None
    return host, port


class RpcClient:
    """Calls methods on one server. Use one client per server, and close it when done.

    ``client_id`` (printable ASCII) is sent as the ``X-Client-Id`` header. ``timeout`` bounds
    each call as a whole (waiting for a connection, connecting, sending and reading the
    reply). ``peer_auth`` signs each request and checks each reply;
    ``token`` is sent as a bearer token; ``tls`` sets how an ``https://`` server is verified
    and the certificate shown to it.

    A plain ``http://`` server is called through :class:`trioraft.rpc.http1.Pool`, a lean
    HTTP/1.1 client of our own (see that module for its invariants): at most 64 connections
    in use at once, 16 kept alive, an idle one reused for at most ``keep_alive_for`` seconds (keep
    it below the server's keep-alive timeout, 5 s by default), a reply of at most
    ``max_reply_bytes`` with a ``Content-Length``. It costs a fraction of httpx's CPU per
    call (``benchmarks/RESULTS.md``).

    An ``https://`` server is called through httpx: its transport (its connection pool)
    directly, not an ``httpx.AsyncClient``, whose layers (URL and header merging, cookies,
    auth, redirects, proxies from the environment) do nothing for these calls and cost about
    a third of httpx's CPU per call. There ``timeout`` bounds each step (connect, each read),
    and the call as a whole is cut off at ``timeout`` too.
    """

    def __init__(
        self,
        url: str,
        client_id: str,
        *,
        timeout: float = 1.0,
        peer_auth: PeerAuth | None = None,
        token: str | None = None,
        tls: ClientTls | None = None,
        keep_alive_for: float = DEFAULT_KEEP_ALIVE_FOR,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
    ) -> None:
        self.url = url.rstrip("/")
        self.client_id = client_id
        base = httpx.URL(self.url)
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError(f"expected an http(s)://HOST[:PORT] URL, got {url!r}")
        if tls is not None and base.scheme != "https":
            raise ValueError(f"TLS settings given for a plain http URL, {url!r}")
        if not (client_id.isascii() and client_id.isprintable()):
            # The lean client writes the header as it is: a CR or LF would start new ones.
            raise ValueError(f"the client id must be printable ASCII, got {client_id!r}")
        if token is not None and not header_safe(token):
            raise ValueError("the token must be non-empty printable ASCII without spaces")
        self._timeout = timeout
        self._max_reply_bytes = max_reply_bytes
        self._urls: dict[str, httpx.URL] = {}  # by method: parsing a URL costs every call
        self._heads: dict[str, bytes] = {}  # by method: the plain-HTTP request head
        self._headers = [
            (b"Host", base.netloc),
            (CLIENT_ID_HEADER.encode(), client_id.encode("ascii")),
            (b"Content-Type", b"application/json"),
        ]
        if token is not None:
            self._headers.append((b"Authorization", f"Bearer {token}".encode()))
        self._peer_auth = peer_auth
        self._extensions = {"timeout": httpx.Timeout(timeout).as_dict()}
        self._pool: Pool | None = None
        self._http: httpx.AsyncHTTPTransport | None = None
        if base.scheme == "http":
            self._pool = Pool(
                base.host,
                base.port or 80,
                tag_header=_AUTH_HEADER_BYTES,
                keep_alive_for=keep_alive_for,
                max_reply_bytes=max_reply_bytes,
            )
        else:
            self._http = httpx.AsyncHTTPTransport(
                verify=client_context(tls),
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            )

    async def call(
        self, method: str, args: Any, reply_type: type[T], *, lost_after: float | None = None
    ) -> T | None:
        """Send ``args`` (a message or a dict) to ``POST /method``; the reply, or ``None``
        if the call was lost (or took over ``lost_after`` seconds, by default the client's
        timeout). Raises
        :class:`BadRequest` (with the server's message and status) when the server refused
        the request for what it is (400, 401, 403, 404, 413): sending it again would be
        refused again."""
        body = dump_json(args if isinstance(args, dict) else encode(args))
        request_tag = b""
        credential: bytes | None = None
        if self._peer_auth is not None:
            credential, request_tag = self._peer_auth.sign_request(method, body)
        limit = self._timeout if lost_after is None else lost_after
        if self._pool is not None:
            head = self._heads.get(method)
            if head is None:
                head = self._heads[method] = self._plain_head(method)
            head += b"Content-Length: %d\r\n" % len(body)
            if credential is not None:
                head += b"%s: %s\r\n" % (_AUTH_HEADER_BYTES, credential.hex().encode())
            reply = await self._pool.post(head + b"\r\n" + body, limit)
            if reply is None:
                return None
            status, tag_value, content = reply.status, reply.tag, reply.content
        else:
            answer = await self._call_httpx(method, body, credential, lost_after, limit)
            if answer is None:
                return None
            status, tag_value, content = answer
        if status in _REFUSALS:
            raise BadRequest(_error_message(content, status), status)
        if not 200 <= status < 300:
            return None
        if self._peer_auth is not None:
            tag = unhex(tag_value)
            if tag is None or len(tag) != TAG_BYTES:
                return None
            if not self._peer_auth.check_reply(request_tag, status, content, tag):
                return None
        try:
            data = parse_json(content)
        except BadRequest:
            return None
        return decode_reply(data, reply_type)

    def _plain_head(self, method: str) -> bytes:
        """The fixed part of a plain-HTTP request's head to ``POST /method``."""
        url = self._urls.get(method)
        if url is None:
            url = self._urls[method] = httpx.URL(f"{self.url}/{method}")
        lines = [b"POST %s HTTP/1.1\r\n" % url.raw_path]
        lines += [b"%s: %s\r\n" % header for header in self._headers]
        return b"".join(lines)

    async def _call_httpx(
        self,
        method: str,
        body: bytes,
        credential: bytes | None,
        lost_after: float | None,
        limit: float,
    ) -> tuple[int, str | None, bytes] | None:
        """The call over httpx (``https://``): status, tag header and body, or ``None``."""
        assert self._http is not None
        url = self._urls.get(method)
        if url is None:
            url = self._urls[method] = httpx.URL(f"{self.url}/{method}")
        headers = [*self._headers, (b"Content-Length", str(len(body)).encode())]
        if credential is not None:
            headers.append((_AUTH_HEADER_BYTES, credential.hex().encode()))
        request = httpx.Request(
            "POST",
            url,
            headers=headers,
            stream=_Body(body),
            extensions=(
                self._extensions
                if lost_after is None
                else {"timeout": httpx.Timeout(lost_after).as_dict()}
            ),
        )
        with trio.move_on_after(max(limit, 0.0)):
            try:
                response = await self._http.handle_async_request(request)
                try:
                    content = await _read_bounded(response, self._max_reply_bytes)
                finally:
                    await response.aclose()
            except (httpx.HTTPError, OSError, trio.BrokenResourceError):
                return None
            if content is None:
                return None
            return response.status_code, response.headers.get(AUTH_HEADER), content
        return None

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
        if self._http is not None:
            await self._http.aclose()

    async def __aenter__(self) -> RpcClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def _read_bounded(response: httpx.Response, limit: int) -> bytes | None:
    """``response``'s body, or ``None`` if it is over ``limit`` bytes."""
    parts: list[bytes] = []
    size = 0
    async for part in response.aiter_bytes():
        size += len(part)
        if size > limit:
            return None
        parts.append(part)
    return b"".join(parts)


_AUTH_HEADER_BYTES = AUTH_HEADER.encode()


#: Statuses that refuse a request for what it is, not for the moment (408, 5xx are not); and
#: 409, a membership change refused while another is under way: the caller decides whether
#: to ask again (the KV routes never answer it).
_REFUSALS = frozenset({400, 401, 403, 404, 405, 409, 413, 422})


def _error_message(content: bytes, status: int) -> str:
    try:
        data = parse_json(content)
    except BadRequest:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return data["error"]
    return f"refused with HTTP {status}"


class _Body(httpx.AsyncByteStream):
    """A request body as a plain async iterator.

    httpx's own byte stream is an async generator; a call cancelled while sending (as every
    RPC deadline may do) leaves it unfinished, and Trio reports each such generator when it
    is collected (encode/httpx#3686). An iterator object has nothing to finalize.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __aiter__(self) -> _Once:  # type: ignore[override]
        return _Once(self._data)


class _Once:
    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    def __aiter__(self) -> _Once:
        return self

    async def __anext__(self) -> bytes:
        if self._data is None:
            raise StopAsyncIteration
        data, self._data = self._data, None
        return data
