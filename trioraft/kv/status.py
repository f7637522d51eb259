"""``trioraft status``: one table of a cluster, from every server's ``GET /status``.

:func:`fetch_statuses` asks every server at once; a server that does not answer within
``answer_within`` is a row saying so. :func:`render_table` lays the rows out; its ``LAG``
column is how far each server's applied index trails the highest commit index any server
reported (the leader's, when it answered), so a follower that falls behind shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import trio

from ..rpc.tls import ClientTls, client_context

COLUMNS = (
    "URL", "ID", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAG", "CONTACT", "READS",
    "DATA", "READY",
)  # fmt: skip


async def fetch_statuses(
    urls: Sequence[str], *, tls: ClientTls | None = None, answer_within: float = 1.0
) -> list[dict[str, Any]]:
    """Each server's ``/status`` with its ``url``; ``{"url", "error"}`` for one that did not
    answer."""
    rows: list[dict[str, Any]] = [{"url": url} for url in urls]
    verify = client_context(tls) if tls is not None else True
    async with httpx.AsyncClient(timeout=answer_within, verify=verify) as http:

        async def ask(row: dict[str, Any]) -> None:
            try:
                response = await http.get(f"{row['url'].rstrip('/')}/status")
                response.raise_for_status()
                row.update(response.json())
            except (httpx.HTTPError, ValueError) as exc:
                row["error"] = str(exc) or type(exc).__name__

        async with trio.open_nursery() as nursery:
            for row in rows:
                nursery.start_soon(ask, row)
    return rows


def render_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as an aligned text table, one server a line."""
    commits = [row["commit_index"] for row in rows if "commit_index" in row]
    top = max(commits, default=0)
    lines = [list(COLUMNS)]
    for row in rows:
        if "error" in row:
            lines.append([row["url"], f"unreachable: {row['error']}"])  # spans the columns
            continue
        contact = row.get("leader_contact_s")
        reads = row.get("reads", {})
        lines.append(
            [
                row["url"],
                str(row.get("id", "-")),
                str(row.get("role", "-")),
                str(row.get("term", "-")),
                str(row.get("leader") or "-"),
                str(row.get("commit_index", "-")),
                str(row.get("last_applied", "-")),
                str(top - row["last_applied"]) if "last_applied" in row else "-",
                "-" if contact is None else _seconds(contact),
                " ".join(f"{mode}:{n}" for mode, n in reads.items()) or "-",
                _bytes(row["storage_bytes"]) if "storage_bytes" in row else "-",
                {True: "yes", False: "NO"}.get(row.get("ready"), "-"),
            ]
        )
    full = [line for line in lines if len(line) == len(COLUMNS)]
    widths = [max(len(line[k]) for line in full) for k in range(len(COLUMNS))]
    widths[0] = max(len(line[0]) for line in lines)
    return "\n".join(
        "  ".join(cell.ljust(widths[k]) for k, cell in enumerate(line)).rstrip() for line in lines
    )


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.1f}s"


def _bytes(value: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1000
    raise AssertionError("unreachable")
