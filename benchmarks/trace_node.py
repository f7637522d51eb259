"""``trioraft node`` with timestamps: the same command line, run with every step of a put's
path wrapped to record when it happened (``time.perf_counter``, which on Linux is the
system-wide monotonic clock, so the stamps of several processes on one machine compare).

    TRACE_OUT=FILE python benchmarks/trace_node.py node --id 1 ... (as ``trioraft node``)

On exit (SIGTERM) the process writes its events to ``FILE`` as JSON: a list of
``[name, seconds, detail]``. ``breakdown.py`` starts three of these and reads them back.
Only for measuring: the wrappers add a few µs to each step they time.

``PROFILE_OUT=FILE`` instead (no ``TRACE_OUT``) runs the node untouched but for a sampling
profiler of its CPU time: ``SIGPROF`` every 2 ms of the process's CPU (user + system,
all threads), the main thread's Python stack recorded at each; on exit ``FILE`` holds the
collapsed stacks (``file:function;...`` outermost first) with their counts, as JSON; SIGUSR1
forgets the samples so far (startup). (py-spy cannot attach to processes in this sandbox.)
"""

from __future__ import annotations

import atexit
import collections
import functools
import json
import os
import signal
import sys
import time
from typing import Any

from quart_trio import QuartTrio

import trioraft.rpc.http as http
from trioraft.cli import main
from trioraft.kv.node import KVNode
from trioraft.kv.rsm import ReplicatedStateMachine
from trioraft.raft.node import RaftNode
from trioraft.raft.storage import FileStorage

EVENTS: list[tuple[str, float, Any]] = []
now = time.perf_counter


def stamp(name: str, detail: Any = None) -> None:
    EVENTS.append((name, now(), detail))


def around_async(cls: Any, attribute: str, name: str, detail=None) -> None:
    """Stamp ``name:start`` and ``name:end`` around the coroutine method ``cls.attribute``."""
    original = getattr(cls, attribute)

    @functools.wraps(original)
    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        stamp(f"{name}:start", detail(*args, **kwargs) if detail else None)
        try:
            return await original(*args, **kwargs)
        finally:
            stamp(f"{name}:end", detail(*args, **kwargs) if detail else None)

    setattr(cls, attribute, wrapped)


def around_sync(cls: Any, attribute: str, name: str, detail=None) -> None:
    original = getattr(cls, attribute)

    @functools.wraps(original)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        stamp(f"{name}:start", detail(*args, **kwargs) if detail else None)
        try:
            return original(*args, **kwargs)
        finally:
            stamp(f"{name}:end", detail(*args, **kwargs) if detail else None)

    setattr(cls, attribute, wrapped)


def instrument() -> None:
    # The client listener and the peer listener: our code starts at dispatch (after
    # Hypercorn and Quart have the request and its body), and ends when it returns.
    original_dispatch = http.dispatch

    async def dispatch(routes: Any, method: str, body: bytes, **kwargs: Any) -> Any:
        stamp("dispatch:start", method)
        try:
            return await original_dispatch(routes, method, body, **kwargs)
        finally:
            stamp("dispatch:end", method)

    http.dispatch = dispatch  # answer() looks it up in the module at each call

    # Hypercorn has parsed a request's head and calls the app; Quart's view starts.
    original_wrap_app = http.wrap_app

    def wrap_app(app: Any, *args: Any) -> Any:
        asgi = original_wrap_app(app, *args)

        async def stamped(scope: Any, receive: Any, send: Any, *rest: Any) -> None:
            if scope.get("type") == "http":
                stamp("asgi:start", scope.get("path"))
            await asgi(scope, receive, send, *rest)

        return stamped

    http.wrap_app = wrap_app  # serve() looks it up in the module
    around_async(QuartTrio, "dispatch_request", "view")
    around_async(KVNode, "handle_put", "handle_put")
    around_async(RaftNode, "read_index", "read_index")

    original_start_read = RaftNode.start_read

    def start_read(self: RaftNode) -> Any:
        started = original_start_read(self)
        stamp("start_read", started and started.round)
        return started

    RaftNode.start_read = start_read  # type: ignore[method-assign]

    original_submit = RaftNode.submit

    def submit(self: RaftNode, command: str) -> tuple[int, int, bool]:
        result = original_submit(self, command)
        stamp("raft_submit", result[0])
        return result

    RaftNode.submit = submit  # type: ignore[method-assign]
    around_sync(FileStorage, "append", "storage_append", lambda self, first, entries: first)
    around_async(FileStorage, "sync", "leader_fsync")
    around_sync(FileStorage, "sync_blocking", "follower_fsync")

    def call_detail(
        self: RaftNode, peer: str, method: str, args: Any, reply_type: Any, wait: Any = None
    ) -> Any:
        entries = getattr(args, "entries", None)
        if not entries:
            return [peer, method, None]
        return [peer, method, args.prev_log_index + len(entries)]

    around_async(RaftNode, "_call", "peer_call", call_detail)

    def append_detail(self: RaftNode, args: Any) -> Any:
        return args.prev_log_index + len(args.entries) if args.entries else None

    around_async(RaftNode, "handle_append_entries", "follower_append", append_detail)

    # The core moves the commit index and reports it with a StateChanged action.
    original_state_changed = RaftNode._state_changed
    stamped_commit = 0

    def state_changed(self: RaftNode, term_changed: bool) -> None:
        nonlocal stamped_commit
        if self.commit_index > stamped_commit:
            stamped_commit = self.commit_index
            stamp("commit", stamped_commit)
        original_state_changed(self, term_changed)

    RaftNode._state_changed = state_changed  # type: ignore[method-assign]

    original_apply = ReplicatedStateMachine._apply_entry

    def apply_entry(self: ReplicatedStateMachine, message: Any) -> None:
        stamp("apply:start", message.index)
        original_apply(self, message)
        stamp("apply:end", message.index)

    ReplicatedStateMachine._apply_entry = apply_entry  # type: ignore[method-assign]


def dump() -> None:
    with open(os.environ["TRACE_OUT"], "w") as f:
        json.dump(EVENTS, f)


STACKS: collections.Counter[tuple[str, ...]] = collections.Counter()


def sample(signum: int, frame: Any) -> None:
    stack = []
    while frame is not None:
        code = frame.f_code
        stack.append(f"{code.co_filename}:{code.co_name}")
        frame = frame.f_back
    STACKS[tuple(reversed(stack))] += 1


def dump_profile() -> None:
    signal.setitimer(signal.ITIMER_PROF, 0)
    with open(os.environ["PROFILE_OUT"], "w") as f:
        json.dump([[";".join(stack), n] for stack, n in STACKS.items()], f)


if __name__ == "__main__":
    if "PROFILE_OUT" in os.environ:
        signal.signal(signal.SIGPROF, sample)
        signal.signal(signal.SIGUSR1, lambda signum, frame: STACKS.clear())  # start afresh
        signal.setitimer(signal.ITIMER_PROF, 0.002, 0.002)
        atexit.register(dump_profile)
    else:
        instrument()
        atexit.register(dump)
    sys.exit(main())
