"""Configuration reload driven by a watch: a service follows every change, in order, no gaps.

Run it with ``python examples/config_reload.py`` (``--changes N`` to scale it).

Three KV servers run here on loopback. The configuration is the keys under ``config/``. A
service reads all of it with ``range`` (one consistent view, as of one log index), then
watches the prefix from exactly that index: ``async with kv.watch("config/", after=index)``.
Each change it receives carries the index of the entry that made it; the service applies it
to its view and "reloads" (here: prints the new setting). Meanwhile an operator changes the
configuration: conditional puts, a key added, a key deleted, and a transaction that changes
two keys at once (both changes carry the transaction's one index). Halfway through, the
service drops its watch and resumes it from the last index it applied, on another server, as
a restarted service would.

Checked: the service receives exactly the operator's changes, in the operator's order, each
once, with indexes that never go back (equal only within one transaction); its final view
equals what ``range`` reads from the store.
"""

from __future__ import annotations

import argparse
import tempfile

import trio

from trioraft import Change, ClusterClient, Compare, TxnOp
from trioraft.kv.node import run_local_cluster

PREFIX = "config/"


async def read_config(kv: ClusterClient) -> tuple[dict[str, str], int]:
    """Every setting under PREFIX, and the index they were all read at.

    Pages after the first are read at later indexes; starting the watch after the *first*
    page's index replays whatever changed meanwhile, which applying again makes right."""
    listing = await kv.range_all(prefix=PREFIX)
    return {item.key: item.value for item in listing.items}, listing.first_index


class Service:
    """Keeps ``view`` equal to the configuration, as of index ``applied``."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.view: dict[str, str] = {}
        self.applied = 0  # the index the view is as of
        self.received: list[Change] = []
        self._moved = trio.Event()

    async def load(self) -> None:
        async with ClusterClient(self.urls) as kv:
            self.view, self.applied = await read_config(kv)
        print(f"  service: loaded {len(self.view)} settings as of index {self.applied}")

    def apply(self, change: Change) -> None:
        assert change.index >= self.applied, f"went back: {change.index} < {self.applied}"
        if change.kind == "put":
            self.view[change.key] = change.value
        else:
            self.view.pop(change.key, None)
        self.applied = change.index
        self.received.append(change)
        setting = change.key.removeprefix(PREFIX)
        shown = f"= {change.value!r}" if change.kind == "put" else "deleted"
        print(f"  service: reload #{len(self.received)} at index {change.index}: {setting} {shown}")
        self._moved.set()
        self._moved = trio.Event()

    async def follow(self, server: int, stop_after: int | None = None) -> None:
        """Watch from ``applied`` on, asking ``server`` first; drop the watch after
        ``stop_after`` changes (else follow until cancelled)."""
        async with ClusterClient(self.urls[server:] + self.urls[:server]) as kv:
            seen = 0
            async with kv.watch(PREFIX, after=self.applied) as changes:
                async for change in changes:
                    self.apply(change)
                    seen += 1
                    if seen == stop_after:
                        return

    async def run(self, restart_after: int) -> None:
        await self.follow(0, stop_after=restart_after)
        print(f"  service: watch dropped after index {self.applied}; resuming on another server")
        await self.follow(1)

    async def reach(self, index: int) -> None:
        """Return once the view is as of ``index`` or later."""
        while self.applied < index:
            await self._moved.wait()


async def operator(kv: ClusterClient, changes: int) -> tuple[list[tuple[str, str, str]], int]:
    """Change the configuration; what it did, in order, and the index of its last change."""
    done: list[tuple[str, str, str]] = []
    for n in range(changes):
        version = (await kv.get(PREFIX + "workers")).version
        await kv.put(PREFIX + "workers", str(5 + n), version)
        done.append((PREFIX + "workers", "put", str(5 + n)))
    await kv.put(PREFIX + "feature/dark-mode", "on", 0)
    done.append((PREFIX + "feature/dark-mode", "put", "on"))
    await kv.delete(PREFIX + "legacy-endpoint", 1)
    done.append((PREFIX + "legacy-endpoint", "delete", ""))
    outcome = await kv.txn(  # a new address and port together, or neither
        compare=[Compare(PREFIX + "db/host", "=", value="db-1.internal")],
        success=[
            TxnOp("put", PREFIX + "db/host", "db-2.internal"),
            TxnOp("put", PREFIX + "db/port", "5433"),
        ],
    )
    assert outcome.succeeded
    done += [(PREFIX + "db/host", "put", "db-2.internal"), (PREFIX + "db/port", "put", "5433")]
    return done, outcome.index


async def main(changes: int) -> None:
    with tempfile.TemporaryDirectory(prefix="trioraft-config-") as tmp:
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(
                lambda task_status: run_local_cluster(3, tmp, task_status=task_status)
            )
            print(f"3 servers: {', '.join(urls)}")
            async with ClusterClient(urls, client_id="operator") as kv:
                initial = {"workers": "4", "legacy-endpoint": "/v1", "db/host": "db-1.internal"}
                initial |= {"db/port": "5432", "log-level": "info"}
                for key, value in initial.items():
                    await kv.put(PREFIX + key, value, 0)

                service = Service(urls)
                await service.load()
                with trio.fail_after(60):
                    async with trio.open_nursery() as app:
                        app.start_soon(service.run, changes // 2)
                        expected, last = await operator(kv, changes)
                        await service.reach(last)
                        app.cancel_scope.cancel()
                store, _ = await read_config(kv)

            got = [(c.key, c.kind, c.value) for c in service.received]
            indexes = [c.index for c in service.received]
            print(f"operator: {len(expected)} changes; service: {len(got)} reloads")
            assert got == expected, f"missed, doubled or reordered:\n{got}\n{expected}"
            assert indexes == sorted(indexes) and indexes[-1] == indexes[-2] == last
            assert len(set(indexes)) == len(indexes) - 1, "only the txn shares an index"
            assert service.view == store, f"{service.view} != {store}"
            print(f"OK: {len(got)} changes followed in order, none missed; views agree")
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=6, help="updates of one setting")
    trio.run(main, parser.parse_args().changes)
