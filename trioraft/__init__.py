"""trioraft: Raft consensus and a replicated, versioned key/value store for Trio.

The public API is re-exported here; everything in a module whose name starts with ``_`` is
private. The test kit lives in :mod:`trioraft.testing`.
"""

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
from ._gc import tune_gc
from .kv.changes import Change, Compacted
from .kv.clients import ClusterClient, KeyValue, KVClient, Versioned
from .kv.lease_lock import LockLost, elect, lease_lock
from .kv.lock import Lock
from .kv.machine import VersionedKV
from .kv.messages import Compare, KeyRecord, KeyResult, RangePage, TxnOp, TxnOutcome
from .kv.server import KVServer
from .raft.node import Applied, RaftConfig, RaftNode, RaftStatistics, Role, SnapshotApplied
from .raft.persister import Persister
from .raft.serve import serve_node
from .raft.storage import FileStorage, MemoryStorage
from .rpc.auth import PeerAuth
from .rpc.http import Route, RpcClient, make_app, serve
from .rpc.tls import ClientTls, ServerTls
from .rpc.transport import HttpTransport

__version__ = "0.1.0"

__all__ = [
    "Applied",
    "BadRequest",
    "Change",
    "ClientTls",
    "ClusterClient",
    "Compacted",
    "Compare",
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
    "Lock",
    "LockLost",
    "MaybeApplied",
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
