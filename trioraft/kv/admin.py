"""The operator's client for membership and leadership: finds the leader and calls the
membership routes of :class:`~trioraft.kv.node.KVNode` on it.

    async with open_admin_client(["http://127.0.0.1:9001", ...]) as admin:
        conf = await admin.member_list()
        await admin.member_add("4", peer_url, client_url=url)   # learner, then
        await admin.wait_caught_up("4")
        await admin.member_promote("4")

Invariants:

- Every call but :meth:`AdminClient.member_list` goes to the leader through
  :meth:`~trioraft.kv.clients.Servers.call_leader`, the one retry loop of the HTTP clients
  (it follows ``WrongLeader`` hints, else tries the servers in turn); none takes a timeout:
  the caller bounds it (``trio.fail_after``).
- Each change is safe to retry: a server answers OK, proposing nothing, for a change already
  in effect. A refused change raises :class:`~trioraft.BadRequest` (its ``status``: 400
  invalid, 409 refused for now).
- Removing the leader: the leader hands over, answers ``WrongLeader`` naming the new one,
  and the retry there removes it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from ..rpc.tls import ClientTls
from .clients import Backoff, Servers
from .messages import (
    MemberAddArgs,
    MemberArgs,
    MemberListArgs,
    MembershipReply,
    TransferLeaderArgs,
)


class AdminClient:
    """Membership changes and leadership transfers over ``servers`` (see the module)."""

    def __init__(self, servers: Servers) -> None:
        self.servers = servers

    async def member_list(self) -> MembershipReply:
        """The configuration as the leader knows it (with each peer's match index)."""
        return await self.servers.call_leader("member_list", MemberListArgs(), MembershipReply)

    async def member_add(
        self, node_id: str, peer_url: str, client_url: str = ""
    ) -> MembershipReply:
        args = MemberAddArgs(node_id, peer_url, client_url)
        args.validate()
        return await self.servers.call_leader("member_add", args, MembershipReply)

    async def member_promote(self, node_id: str) -> MembershipReply:
        return await self.servers.call_leader(
            "member_promote", MemberArgs(node_id), MembershipReply
        )

    async def member_remove(self, node_id: str) -> MembershipReply:
        return await self.servers.call_leader("member_remove", MemberArgs(node_id), MembershipReply)

    async def transfer_leader(self, to: str = "") -> MembershipReply:
        return await self.servers.call_leader(
            "transfer_leader", TransferLeaderArgs(to), MembershipReply
        )

    async def wait_caught_up(self, node_id: str) -> MembershipReply:
        """Return once the leader reports ``node_id``'s match index at its commit index."""
        backoff = Backoff()
        while True:
            reply = await self.member_list()
            if reply.match.get(node_id, -1) >= reply.commit_index > 0:
                return reply
            await backoff.wait()


@asynccontextmanager
async def open_admin_client(
    urls: list[str],
    *,
    token: str | None = None,
    tls: ClientTls | None = None,
    rpc_timeout: float = 5.0,
) -> AsyncIterator[AdminClient]:
    """An :class:`AdminClient` over the servers' client ``urls``; closed on exit."""
    servers = Servers(
        urls, f"admin-{uuid.uuid4().hex[:12]}", rpc_timeout=rpc_timeout, token=token, tls=tls
    )
    try:
        yield AdminClient(servers)
    finally:
        with trio.CancelScope(shield=True):
            await servers.aclose()
