"""Raft over HTTP: serve a :class:`RaftNode`'s peer RPCs from a Quart-Trio app.

    node = RaftNode("a", ["a", "b", "c"], FileStorage("data/a"),
                    HttpTransport("a", {"b": url_b, "c": url_c}))
    url = await nursery.start(serve_node, node, "127.0.0.1", 9001)

With ``peer_port``, the peer RPCs are also answered over framed TCP on that port (see
:mod:`trioraft.rpc.tcp`; peers then reach this node at ``tcp://HOST:PORT``).
``serve_node`` runs the node and its HTTP app in one nursery; cancel it to stop (a crash: the
node flushes nothing more, and restarts from its storage). Extra routes (a KV service, say)
share the app, so one port serves peers and clients. ``GET /status`` reports the node.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from functools import partial

import trio

from ..rpc.http import Route, make_app, serve
from ..rpc.tcp import serve_tcp
from .node import RaftNode

#: Large enough for the biggest AppendEntries batch or snapshot the node sends.
DEFAULT_MAX_BODY_BYTES = 64 << 20


async def serve_node(
    node: RaftNode,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    extra_routes: Mapping[str, Route] | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    peer_port: int | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``node`` and serve its RPCs until cancelled; ``task_status`` gets the HTTP URL."""
    app = make_app(
        {**node.routes(), **(extra_routes or {})},
        name=f"trioraft-node-{node.id}",
        max_body_bytes=max_body_bytes,
        status=lambda: asdict(node.statistics()),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        url = await nursery.start(serve, app, host, port)
        if peer_port is not None:
            await nursery.start(
                partial(serve_tcp, node.routes(), host, peer_port, max_frame_bytes=max_body_bytes)
            )
        task_status.started(url)
