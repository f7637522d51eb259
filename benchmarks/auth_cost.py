"""What peer authentication costs: the CPU of one authenticated AppendEntries round trip's
tags, both sides (the leader signs the request and checks the reply, the follower checks the
request, with its replay window, and signs the reply), against the CPU a put costs a cluster.

    python benchmarks/auth_cost.py [--entries 1 16] [--rounds 20000]

The request and reply bodies are those of a real round trip carrying ``--entries`` puts of
16 B values. Prints µs per round trip; a sequential put makes one round trip per follower,
a batch of puts one per follower for the whole batch. Compare with the cluster CPU per put
of ``sidebyside.py`` (or ``breakdown.py --profile``, whose "peer authentication" bucket is
the same work seen from inside the nodes).
"""

from __future__ import annotations

import argparse
import json
import os
import time

from trioraft.rpc.auth import PeerAuth


def round_trip_us(entries: int, rounds: int) -> float:
    secret = os.urandom(32)
    leader, follower = PeerAuth(secret), PeerAuth(secret)
    command = json.dumps({"op": "put", "key": "bench-123456", "value": "x" * 16, "version": 0})
    body = json.dumps(
        {
            "term": 3,
            "leader": "1",
            "prev_index": 1000,
            "prev_term": 3,
            "entries": [[3, command]] * entries,
            "commit": 999,
        }
    ).encode()
    reply = json.dumps({"term": 3, "success": True, "match": 1000 + entries}).encode()
    started = time.process_time()
    for _ in range(rounds):
        credential, tag = leader.sign_request("append_entries", body)
        checked = follower.check_request(credential, "append_entries", body)
        assert checked is not None
        reply_tag = follower.sign_reply(checked, 200, reply)
        assert leader.check_reply(tag, 200, reply, reply_tag)
    return 1e6 * (time.process_time() - started) / rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=20000)
    opts = parser.parse_args()
    for entries in opts.entries:
        us = round_trip_us(entries, opts.rounds)
        print(f"{entries:>4} entries a message: {us:.1f} µs of CPU per round trip, both sides")


if __name__ == "__main__":
    main()
