"""How fast the linearizability checker decides large histories.

    python benchmarks/checker.py [--ops 10000] [--clients 50] [--seeds 5] [--timeout 60]
                                 [--shapes NAME ...] [--out FILE]

Each history comes from a simulated execution: every client runs its ops one after another
(each lasts 0-2 s, mean 1 s, with up to 0.1 s between them, so about all the clients overlap
at any time); each op takes effect at a random point inside its interval, where a correct
object computes its output (1 op in 100 is cancelled: it takes effect, but never returns).
So every history is linearizable, and the checker must say so. A copy with one output
corrupted (a read answering a value no write ever wrote) must be refused. For each shape
and seed, the time to check each, and the ops per second.

Shapes: the versioned KV on one key (every client on the same key) and on 100 keys, with
gets, puts at the version last read, a few ``Maybe`` answers and cancelled ops; the
get/put/append KV; a register with read, write and compare-and-set. A check that runs out of
time counts as a timeout (its time is the timeout).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from trioraft.testing import (
    KV_MODEL,
    VERSIONED_KV_MODEL,
    KVInput,
    KVOutput,
    Model,
    Operation,
    RegisterInput,
    check_operations,
    register_model,
)


@dataclass
class Call:
    client: str
    call: float
    ret: float
    point: float  # when it takes effect
    pending: bool  # recorded as never returned


def timeline(rng: random.Random, n_ops: int, n_clients: int) -> list[Call]:
    """Each client's ops back to back; the calls of all clients, by when they take effect."""
    clock = [rng.uniform(0, 1) for _ in range(n_clients)]
    calls = []
    for k in range(n_ops):
        c = k % n_clients
        call = clock[c]
        ret = call + rng.uniform(0.0, 2.0)
        clock[c] = ret + rng.uniform(0.0, 0.1)
        calls.append(Call(f"c{c}", call, ret, rng.uniform(call, ret), rng.random() < 0.01))
    return sorted(calls, key=lambda x: x.point)


def versioned_kv(rng: random.Random, n_ops: int, n_clients: int, n_keys: int) -> list[Operation]:
    store: dict[str, tuple[str, int]] = {}
    last_read: dict[tuple[str, str], int] = {}
    ops = []
    for k, c in enumerate(timeline(rng, n_ops, n_clients)):
        key = f"k{rng.randrange(n_keys)}"
        value, version = store.get(key, ("", 0))
        if rng.random() < 0.5:
            inp = KVInput("get", key)
            out = KVOutput(value, version, "OK" if version else "NoKey")
            last_read[c.client, key] = version
        else:
            want = last_read.get((c.client, key), 0)
            inp = KVInput("put", key, f"v{k}", want)
            if want == version:
                store[key] = (f"v{k}", version + 1)
                err = "OK"
            else:
                err = "NoKey" if version == 0 else "Version"
            out = KVOutput(err="Maybe" if rng.random() < 0.02 else err)
        ops.append(_record(c, inp, out))
    return ops


def plain_kv(rng: random.Random, n_ops: int, n_clients: int, n_keys: int) -> list[Operation]:
    store: dict[str, str] = {}
    ops = []
    for k, c in enumerate(timeline(rng, n_ops, n_clients)):
        key = f"k{rng.randrange(n_keys)}"
        roll = rng.random()
        if roll < 0.5:
            inp, out = KVInput("get", key), KVOutput(store.get(key, ""))
        elif roll < 0.6:
            inp, out = KVInput("put", key, f"p{k}."), KVOutput()
            store[key] = inp.value
        else:
            inp, out = KVInput("append", key, f"{k}."), KVOutput()
            store[key] = store.get(key, "") + inp.value
        ops.append(_record(c, inp, out))
    return ops


def register(rng: random.Random, n_ops: int, n_clients: int, _keys: int) -> list[Operation]:
    value = 0
    ops = []
    for k, c in enumerate(timeline(rng, n_ops, n_clients)):
        roll = rng.random()
        if roll < 0.5:
            inp, out = RegisterInput("read"), value
        elif roll < 0.75:
            inp, out = RegisterInput("write", k), True
            value = k
        else:
            expected = value if rng.random() < 0.5 else rng.randrange(n_ops)
            inp, out = RegisterInput("cas", k, expected), value == expected
            value = k if out else value
        ops.append(_record(c, inp, out))
    return ops


def _record(c: Call, inp: Any, out: Any) -> Operation:
    if c.pending:  # cancelled: it took effect, but its caller never saw it return
        return Operation(c.client, inp, c.call, None, None)
    return Operation(c.client, inp, c.call, out, c.ret)


def corrupt(rng: random.Random, ops: list[Operation]) -> list[Operation]:
    """One read (of a returned op) answers a value no write ever wrote."""
    reads = [
        i
        for i, op in enumerate(ops)
        if op.ret is not None and getattr(op.input, "op", "") in ("get", "read")
    ]
    i = rng.choice(reads)
    op = ops[i]
    bad = replace(op.output, value="never written") if op.input.op == "get" else -1
    return [*ops[:i], replace(op, output=bad), *ops[i + 1 :]]


Generator = Callable[[random.Random, int, int, int], list[Operation]]
#: name: (model, generator, keys, clients (None: --clients)).
SHAPES: dict[str, tuple[Model, Generator, int, int | None]] = {
    "versioned KV, 1 key": (VERSIONED_KV_MODEL, versioned_kv, 1, None),
    "versioned KV, 100 keys": (VERSIONED_KV_MODEL, versioned_kv, 100, None),
    "get/put/append KV, 100 keys": (KV_MODEL, plain_kv, 100, None),
    "register, 10 clients": (register_model(0), register, 1, 10),
    "register, 20 clients": (register_model(0), register, 1, 20),
    # The hard ones: many concurrent blind writes (a register's writes, a KV's puts and
    # appends) that no read pins down between them; every order of them is a distinct state.
    "register, 50 clients": (register_model(0), register, 1, 50),
    "get/put/append KV, 10 keys": (KV_MODEL, plain_kv, 10, None),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=60.0, help="per check, seconds")
    parser.add_argument("--shapes", nargs="*", choices=SHAPES, default=list(SHAPES))
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    rows = []
    print(f"{args.ops} ops per history, seeds 0..{args.seeds - 1}, timeout {args.timeout} s")
    print(f"{'shape':30} {'clients':>7} {'history':>12} {'median s':>9} {'max s':>7} ", end="")
    print(f"{'ops/s':>9} {'timeouts':>8}")
    for name in args.shapes:
        model, generate, keys, clients = SHAPES[name]
        clients = clients or args.clients
        for kind in ("linearizable", "corrupted"):
            times, timeouts = [], 0
            for seed in range(args.seeds):
                rng = random.Random(seed)
                ops = generate(rng, args.ops, clients, keys)
                expected = True
                if kind == "corrupted":
                    ops, expected = corrupt(rng, ops), False
                started = time.perf_counter()
                result = check_operations(model, ops, timeout=args.timeout)
                times.append(time.perf_counter() - started)
                if result.ok is None:
                    timeouts += 1
                else:
                    assert result.ok is expected, f"{name}, seed {seed}: {result.ok}"
            median = statistics.median(times)
            row = {"shape": name, "history": kind, "ops": args.ops, "clients": clients}
            row |= {"seeds": args.seeds, "median_s": median, "max_s": max(times)}
            row |= {"ops_per_s": args.ops / median, "timeouts": timeouts}
            rows.append(row)
            print(
                f"{name:30} {clients:7} {kind:>12} {median:9.2f} {max(times):7.2f} "
                f"{row['ops_per_s']:9,.0f} {timeouts:8}"
            )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
