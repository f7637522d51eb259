"""trioraft: Raft consensus and a replicated, versioned key/value store for Trio.

The public API is re-exported here; everything in a module whose name starts with ``_`` is
private. The test kit lives in :mod:`trioraft.testing`.
"""

import importlib

from ._errors import (
    BadRequest,
    DataDirectoryConflict,
    KeyNotFound,
    KVError,
    LeadershipLost,
    LeaseNotFound,
    MaybeApplied,
    NoSpace,
    NotLeader,
    ProposalTimedOut,
    RaftError,
    SessionExpired,
    StorageCorrupt,
    StorageFailed,
    TrioRaftError,
    VersionConflict,
)

#: The rest of the public API, by the module that defines it: imported when first used, so
#: that importing a pure module (say :mod:`trioraft.raft.core`) loads no Trio or HTTP stack.
_LAZY = {
    "tune_gc": "._gc",
    "Change": ".kv.changes",
    "Compacted": ".kv.changes",
    "ClusterClient": ".kv.clients",
    "KeyValue": ".kv.clients",
    "KVClient": ".kv.clients",
    "Listing": ".kv.clients",
    "Versioned": ".kv.clients",
    "LockLost": ".kv.lease_lock",
    "elect": ".kv.lease_lock",
    "lease_lock": ".kv.lease_lock",
    "Lock": ".kv.lock",
    "VersionedKV": ".kv.machine",
    "Compare": ".kv.messages",
    "KeyRecord": ".kv.messages",
    "KeyResult": ".kv.messages",
    "RangePage": ".kv.messages",
    "TxnOp": ".kv.messages",
    "TxnOutcome": ".kv.messages",
    "KVServer": ".kv.server",
    "Applied": ".raft.node",
    "Configuration": ".raft.membership",
    "MembershipChange": ".raft.membership",
    "MembershipChangeRefused": ".raft.membership",
    "RaftConfig": ".raft.node",
    "RaftNode": ".raft.node",
    "RaftStatistics": ".raft.node",
    "Role": ".raft.node",
    "SnapshotApplied": ".raft.node",
    "Persister": ".raft.persister",
    "serve_node": ".raft.serve",
    "FileStorage": ".raft.storage",
    "MemoryStorage": ".raft.storage",
    "PeerAuth": ".rpc.auth",
    "Route": ".rpc.http",
    "RpcClient": ".rpc.http",
    "make_app": ".rpc.http",
    "serve": ".rpc.http",
    "ClientTls": ".rpc.tls",
    "ServerTls": ".rpc.tls",
    "HttpTransport": ".rpc.transport",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trioraft' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__version__ = "0.1.0"

__all__ = [
    "Applied",
    "BadRequest",
    "Change",
    "ClientTls",
    "ClusterClient",
    "Compacted",
    "Compare",
    "Configuration",
    "DataDirectoryConflict",
    "FileStorage",
    "HttpTransport",
    "KVClient",
    "KVError",
    "KVServer",
    "KeyNotFound",
    "KeyRecord",
    "KeyResult",
    "KeyValue",
    "LeadershipLost",
    "LeaseNotFound",
    "Listing",
    "Lock",
    "LockLost",
    "MaybeApplied",
    "MembershipChange",
    "MembershipChangeRefused",
    "MemoryStorage",
    "NoSpace",
    "NotLeader",
    "PeerAuth",
    "Persister",
    "ProposalTimedOut",
    "RaftConfig",
    "RaftError",
    "RaftNode",
    "RaftStatistics",
    "RangePage",
    "Role",
    "Route",
    "RpcClient",
    "ServerTls",
    "SessionExpired",
    "SnapshotApplied",
    "StorageCorrupt",
    "StorageFailed",
    "TrioRaftError",
    "TxnOp",
    "TxnOutcome",
    "VersionConflict",
    "Versioned",
    "VersionedKV",
    "elect",
    "lease_lock",
    "make_app",
    "serve",
    "serve_node",
    "tune_gc",
]
