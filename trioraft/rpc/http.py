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
  types cannot express.
- :meth:`RpcClient.call` returns the decoded reply, or ``None`` on any network failure,
  timeout, non-2xx status or undecodable reply; it never raises for those.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import cache, partial
from typing import Any, TypeVar

import httpx
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from .._errors import BadRequest
from .codec import decode, encode

T = TypeVar("T")
CLIENT_ID_HEADER = "X-Client-Id"
DEFAULT_MAX_BODY_BYTES = 1 << 20


@dataclass(frozen=True)
class Route:
    """One RPC method: the argument message type and the handler that answers it."""

    args: type
    handler: Callable[[Any], Awaitable[Any]]


def parse_json(body: bytes) -> Any:
    """Parse a UTF-8 request body, raising :class:`BadRequest` on anything that is not JSON."""
    try:
        return _JSON.decode(body.decode())
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BadRequest(f"malformed JSON: {exc}") from None


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


#: One decoder for every body (``json.loads`` with an option builds a new one per call).
_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(json.dumps(payload), status=status, content_type="application/json")


async def dispatch(routes: Mapping[str, Route], method: str, body: bytes) -> tuple[int, Any]:
    """Answer one call: validate ``body`` for ``method`` and run its handler.

    Returns the HTTP status and the JSON-ready payload (the reply, or ``{"error": ...}``).
    """
    try:
        data = parse_json(body)
    except BadRequest as exc:
        if method not in routes:
            return 404, {"error": f"unknown method {method!r}"}
        return exc.status, {"error": exc.message}
    return await dispatch_parsed(routes, method, data)


async def dispatch_parsed(routes: Mapping[str, Route], method: str, data: Any) -> tuple[int, Any]:
    """:func:`dispatch` for an already parsed JSON body."""
    route = routes.get(method)
    if route is None:
        return 404, {"error": f"unknown method {method!r}"}
    try:
        args = decode(route.args, data)
        reply = await route.handler(args)
    except BadRequest as exc:
        return exc.status, {"error": exc.message}
    return 200, encode(reply)


def decode_reply(data: Any, reply_type: type[T]) -> T | None:
    """A parsed reply as ``reply_type``, or ``None`` if it does not fit."""
    try:
        return decode(reply_type, data)
    except BadRequest:
        return None


def make_app(
    routes: Mapping[str, Route],
    *,
    name: str = "trioraft",
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    status: Callable[[], Any] | None = None,
) -> QuartTrio:
    """A Quart-Trio app answering ``POST /<method>`` for every route in ``routes``.

    ``status``, if given, answers ``GET /status`` with its JSON-ready result.
    """
    app = QuartTrio(name)
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes

    @app.post("/<method>")
    async def post(method: str) -> Response:
        status, payload = await dispatch(routes, method, await request.get_data(cache=False))
        return json_response(payload, status)

    if status is not None:

        @app.get("/status")
        async def get_status() -> Response:
            return json_response(status())

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        return json_response({"error": exc.description or exc.name}, exc.code or 500)

    return app


async def serve(
    app: QuartTrio,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` with Hypercorn until cancelled; ``task_status`` gets the bound URL."""
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.loglevel = "WARNING"
    config.graceful_timeout = 0

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(hypercorn_serve, app, config))
        task_status.started(binds[0])


@cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default (verifying) TLS context, built once per process: building it reads
    the CA bundle, ~70 ms that would otherwise block the event loop for every client made."""
    return httpx.create_ssl_context()


class RpcClient:
    """Calls methods on one server. Use one client per server, and close it when done.

    ``timeout`` bounds each call (connect, send and wait for the reply).

    Requests go straight to an httpx transport (its connection pool), not through an
    ``httpx.AsyncClient``: a client's layers (URL and header merging, cookies, auth,
    redirects, proxies from the environment) do nothing for these calls and cost about a
    third of httpx's CPU per call (a leader replicating over HTTP spent ~10 % of its CPU in
    them).
    """

    def __init__(self, url: str, client_id: str, *, timeout: float = 1.0) -> None:
        self.url = url.rstrip("/")
        self.client_id = client_id
        base = httpx.URL(self.url)
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError(f"expected an http(s)://HOST[:PORT] URL, got {url!r}")
        self._urls: dict[str, httpx.URL] = {}  # by method: parsing a URL costs every call
        self._headers = [
            (b"Host", base.netloc),
            (CLIENT_ID_HEADER.encode(), client_id.encode("ascii")),
            (b"Content-Type", b"application/json"),
        ]
        self._extensions = {"timeout": httpx.Timeout(timeout).as_dict()}
        self._http = httpx.AsyncHTTPTransport(
            verify=_tls_context(),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )

    async def call(self, method: str, args: Any, reply_type: type[T]) -> T | None:
        """Send ``args`` (a message or a dict) to ``POST /method``; the reply, or ``None``."""
        body = json.dumps(args if isinstance(args, dict) else encode(args)).encode()
        url = self._urls.get(method)
        if url is None:
            url = self._urls[method] = httpx.URL(f"{self.url}/{method}")
        request = httpx.Request(
            "POST",
            url,
            headers=[*self._headers, (b"Content-Length", str(len(body)).encode())],
            stream=_Body(body),
            extensions=self._extensions,
        )
        try:
            response = await self._http.handle_async_request(request)
            try:
                content = await response.aread()
            finally:
                await response.aclose()
        except (httpx.HTTPError, OSError, trio.BrokenResourceError):
            return None
        if not 200 <= response.status_code < 300:
            return None
        try:
            data = parse_json(content)
        except BadRequest:
            return None
        return decode_reply(data, reply_type)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> RpcClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


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
