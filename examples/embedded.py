"""A Trio application that embeds a replicated KV node in its own nursery.

Run it with ``python examples/embedded.py`` (``--events N`` to scale it).

The application is a page-view counter with three replicas. Each replica is one Trio task
tree: its KV node (Raft, the replicated store, the HTTP app for peers and clients) runs in
the replica's nursery beside its own work, here recording page views as appends and reading
the totals through ``node.open_client()``: on the leader those ops enter the log
in-process, with no HTTP hop; on the others they go to the leader. Cancel a replica and its
node stops with it; start it again on the same directory and it catches up.
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
from functools import partial
from pathlib import Path

import trio

from trioraft import ClusterClient
from trioraft.kv.node import KVNode, free_ports


async def replica(
    me: str,
    urls: dict[str, str],
    peer_urls: dict[str, str],
    secret: bytes,
    directory: Path,
    events: int,
    done: trio.Event,
) -> None:
    """One replica of the application: its node plus its own work, in one nursery."""
    node = KVNode(
        me,
        {i: url for i, url in peer_urls.items() if i != me},
        directory / f"replica-{me}",
        client_urls={i: url for i, url in urls.items() if i != me},
        cluster_secret=secret,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(node.serve, "127.0.0.1", port_of(urls[me]), peer_port=port_of(peer_urls[me]))
        )
        async with node.open_client(client_id=f"app-{me}") as kv:
            for _ in range(events):
                await kv.append(f"views/{me}", ".")
            views = {i: len((await kv.get(f"views/{i}")).value) for i in urls}
        print(f"replica {me} ({node.raft.statistics().role}) sees page views {views}")
        done.set()
        await trio.sleep_forever()  # keep serving until the application stops


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def main(events: int) -> None:
    ids = ["a", "b", "c"]
    ports = free_ports(6)
    urls = {i: f"http://127.0.0.1:{port}" for i, port in zip(ids, ports[:3], strict=True)}
    peer_urls = {i: f"tcp://127.0.0.1:{port}" for i, port in zip(ids, ports[3:], strict=True)}
    secret = secrets.token_bytes(32)  # the peers prove they know it
    with tempfile.TemporaryDirectory(prefix="trioraft-embedded-") as tmp:
        async with trio.open_nursery() as app:
            finished = [trio.Event() for _ in ids]
            for i, done in zip(ids, finished, strict=True):
                app.start_soon(replica, i, urls, peer_urls, secret, Path(tmp), events, done)
            for done in finished:
                await done.wait()
            async with ClusterClient(list(urls.values())) as kv:
                totals = [len((await kv.get(f"views/{i}")).value) for i in ids]
            assert totals == [events] * 3, f"lost or doubled page views: {totals}"
            print(f"OK: {sum(totals)} page views recorded exactly once")
            app.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20)
    trio.run(main, parser.parse_args().events)
