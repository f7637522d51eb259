"""trioraft: Raft consensus and a replicated, versioned key/value store for Trio.

The public API is re-exported here; everything in a module whose name starts with ``_`` is
private. The test kit lives in :mod:`trioraft.testing`.
"""

from ._errors import (
    BadRequest,
    KeyNotFound,
    KVError,
    LeadershipLost,
    MaybeApplied,
    NotLeader,
    ProposalTimedOut,
    RaftError,
    StorageCorrupt,
    TrioRaftError,
    VersionConflict,
)
from ._gc import tune_gc
from .kv.clients import ClusterClient, KeyValue, KVClient, Versioned
from .kv.lock import Lock
from .kv.machine import VersionedKV
from .kv.server import KVServer
from .raft.node import Applied, RaftConfig, RaftNode, RaftStatistics, Role, SnapshotApplied
from .raft.persister import Persister
from .raft.serve import serve_node
from .raft.storage import FileStorage, MemoryStorage
from .rpc.http import Route, RpcClient, make_app, serve
from .rpc.transport import HttpTransport

__version__ = "0.1.0"

__all__ = [
    "Applied",
    "BadRequest",
    "ClusterClient",
    "FileStorage",
    "HttpTransport",
    "KVClient",
    "KVError",
    "KVServer",
    "KeyNotFound",
    "KeyValue",
    "LeadershipLost",
    "Lock",
    "MaybeApplied",
    "MemoryStorage",
    "NotLeader",
    "Persister",
    "ProposalTimedOut",
    "RaftConfig",
    "RaftError",
    "RaftNode",
    "RaftStatistics",
    "Role",
    "Route",
    "RpcClient",
    "SnapshotApplied",
    "StorageCorrupt",
    "TrioRaftError",
    "VersionConflict",
    "Versioned",
    "VersionedKV",
    "make_app",
    "serve",
    "serve_node",
    "tune_gc",
]
