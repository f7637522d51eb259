"""Serve a :class:`RaftNode`'s peer RPCs, and nothing else, on a listener of their own.

    node = RaftNode("a", ["a", "b", "c"], FileStorage("data/a"),
                    HttpTransport("a", {"b": url_b, "c": url_c}, peer_auth=auth))
    url = await nursery.start(partial(serve_node, node, "127.0.0.1", 9101, peer_auth=auth))

``serve_node`` runs the node and its peer listener in one nursery; cancel it to stop (a
crash: the node flushes nothing more, and restarts from its storage). The listener speaks
HTTP (``POST /<method>``), or framed TCP with ``transport="tcp"`` (peers then reach it at
``tcp://HOST:PORT``; see :mod:`trioraft.rpc.tcp`).

Invariants:
- Only the Raft routes are served here, never client routes; clients have their own
  listener (see :class:`~trioraft.kv.node.KVNode`).
- With ``peer_auth``, a message without a valid tag of the cluster secret is refused before
  it is decoded: it cannot touch term, vote, log or state.
- Bodies (frames) over ``max_body_bytes`` are refused: it must be at least the peers'
  ``RaftConfig.max_message_bytes``, which bounds every message they send.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import trio

from ..rpc.auth import PeerAuth
from ..rpc.http import make_app, serve
from ..rpc.tcp import DEFAULT_MAX_UNPROVEN, serve_tcp
from ..rpc.tls import ServerTls
from .node import RaftConfig, RaftNode

#: The peer listener's body limit: the largest message a peer sends, by default.
DEFAULT_MAX_BODY_BYTES = RaftConfig.max_message_bytes
#: Connections the HTTP peer listener holds at once. Peers need a few each; the bound also
#: bounds what strangers can make it buffer before their messages fail authentication
#: (one body each, up to ``max_body_bytes``).
MAX_PEER_CONNECTIONS = 128


async def serve_node(
    node: RaftNode,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    transport: Literal["http", "tcp"] = "http",
    peer_auth: PeerAuth | None = None,
    tls: ServerTls | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``node`` and serve its peer RPCs until cancelled; ``task_status`` gets the URL."""
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        if transport == "tcp":
            url = await nursery.start(
                partial(
                    serve_tcp,
                    node.routes(),
                    host,
                    port,
                    max_frame_bytes=max_body_bytes,
                    peer_auth=peer_auth,
                    tls=tls,
                )
            )
        else:
            app = make_app(
                node.routes(),
                name=f"trioraft-peer-{node.id}",
                max_body_bytes=max_body_bytes,
                peer_auth=peer_auth,
            )
            url = await nursery.start(
                partial(
                    serve,
                    app,
                    host,
                    port,
                    tls=tls,
                    max_connections=MAX_PEER_CONNECTIONS,
                    max_unproven=None if peer_auth is None else DEFAULT_MAX_UNPROVEN,
                )
            )
        task_status.started(url)
