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
from ._kvstate import VersionedKV
from ._node import Applied, RaftConfig, RaftNode, RaftStatistics, Role, SnapshotApplied
from ._persister import Persister
from ._rpc import Route, RpcClient, make_app, serve
from ._storage import FileStorage, MemoryStorage
from ._transport import HttpTransport
from .kv import ClusterClient, KeyValue, KVClient, KVServer, Versioned
from .lock import Lock
from .raft import serve_node

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
