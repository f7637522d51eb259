"""The versioned KV: its state machine, the replicated server on Raft, the single server,
the clients and the lock.

The top layer: stands on :mod:`trioraft.raft` and :mod:`trioraft.rpc`.
"""
