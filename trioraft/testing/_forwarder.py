"""A stable TCP address for a server that restarts on another port: a byte-for-byte splice.

Framed TCP peers (:class:`~trioraft.rpc.tcp.TcpTransport`) apply a :class:`Network`'s faults
on the caller's side (``TcpTransport(..., network=...)``), so between them and a server
nothing needs to understand the traffic; what a test still needs is an address that outlives
the server's listener, as :class:`HttpProxy` gives HTTP callers. :class:`TcpForwarder` is that
and nothing more: it forwards bytes, applies no faults and reads no frames.

Invariants:
- Each accepted connection gets its own backend connection to the backend of that moment
  (:meth:`TcpForwarder.set_backend` retargets new connections only); with no backend, or
  one that refuses, the caller's connection is closed at once.
- When either side closes or breaks, both are closed: a caller never waits on a half of a
  pair whose other half is gone (a crashed server's connections end its callers' calls).
"""

from __future__ import annotations

import trio

from ._proxy import Front

_MAX_READ = 1 << 16
_NETWORK_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


class TcpForwarder(Front):
    """Forward every connection to ``backend_url`` (``tcp://`` or ``http://HOST:PORT``);
    its own URL is ``tcp://HOST:PORT``."""

    scheme = "tcp"

    async def _handle(self, caller: trio.SocketStream) -> None:
        address = self.backend_address
        try:
            if address is None:
                return
            try:
                backend = await trio.open_tcp_stream(*address)
            except OSError:
                return
            try:
                async with trio.open_nursery() as pair:
                    pair.start_soon(_pipe, caller, backend, pair.cancel_scope)
                    pair.start_soon(_pipe, backend, caller, pair.cancel_scope)
            finally:
                await trio.aclose_forcefully(backend)
        finally:
            await trio.aclose_forcefully(caller)


async def _pipe(source: trio.SocketStream, sink: trio.SocketStream, pair: trio.CancelScope) -> None:
    """Copy ``source`` to ``sink`` until either ends; then end the pair."""
    try:
        while data := await source.receive_some(_MAX_READ):
            await sink.send_all(data)
    except _NETWORK_ERRORS:
        pass
    finally:
        pair.cancel()
