"""trioraft: Raft consensus and a replicated, versioned key/value store for Trio.

The public API is re-exported here; everything in a module whose name starts with ``_`` is
private. The test kit lives in :mod:`trioraft.testing`.
"""

from ._errors import (
    BadRequest,
    KeyNotFound,
    KVError,
    MaybeApplied,
    StorageCorrupt,
    TrioRaftError,
    VersionConflict,
)
from ._kvstate import VersionedKV
from ._persister import Persister
from ._rpc import Route, RpcClient, make_app, serve
from .kv import KeyValue, KVClient, KVServer, Versioned
from .lock import Lock

__version__ = "0.1.0"

__all__ = [
    "BadRequest",
    "KVClient",
    "KVError",
    "KVServer",
    "KeyNotFound",
    "KeyValue",
    "Lock",
    "MaybeApplied",
    "Persister",
    "Route",
    "RpcClient",
    "StorageCorrupt",
    "TrioRaftError",
    "VersionConflict",
    "Versioned",
    "VersionedKV",
    "make_app",
    "serve",
]
