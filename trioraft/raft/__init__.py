"""Raft consensus: the log and quorum maths, durable storage, the node and how it is served.

Stands on :mod:`trioraft.rpc`; knows nothing of the KV built on it (:mod:`trioraft.kv`).
"""
