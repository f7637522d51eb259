"""The trioraft test kit: fault injection, clusters, history recording and linearizability.

Usable for testing any Trio service that speaks HTTP: put an :class:`HttpProxy` in front of
each server, drive faults through one seeded :class:`Network`, record what clients see with a
:class:`History`, and check it (:meth:`History.check`); :data:`KV_OPS_MODEL` is the KV with
every op (get, put, delete, append, range, txn: :func:`check_kv_ops`). Any other object can
be checked against a :class:`Model` of its own with :func:`check_operations`; a failing
:class:`Result` explains itself and draws the history (:meth:`Result.write_html`).

Without sockets: a :class:`MemoryNetwork` carries calls between nodes in one process (each
node's :class:`MemoryTransport`), through a :class:`Network`'s faults; :class:`RaftCluster`
runs ``n`` Raft nodes on it in a nursery, and crashes, restarts, partitions and heals them;
:func:`run_simulation` runs such a test on virtual time so that its seed replays it exactly.
"""

from ..rpc.transport import MemoryNetwork, MemoryTransport
from ._cluster import RaftCluster
from ._forwarder import TcpForwarder
from ._history import History, RecordingKV
from ._kv_model import KV_OPS_MODEL, check_kv_ops, partition_by_keys
from ._linearizability import Failure, Model, Operation, Result, check_operations
from ._models import (
    KV_MODEL,
    VERSIONED_KV_MODEL,
    KVInput,
    KVOutput,
    RegisterInput,
    Txn,
    check,
    partition_by_key,
    register_model,
)
from ._network import MIT_UNRELIABLE, RELIABLE, UNRELIABLE, Fate, Network, Profile
from ._proxy import HttpProxy
from ._replay import deterministic_scheduling, run_simulation

__all__ = [
    "KV_MODEL",
    "KV_OPS_MODEL",
    "MIT_UNRELIABLE",
    "RELIABLE",
    "UNRELIABLE",
    "VERSIONED_KV_MODEL",
    "Failure",
    "Fate",
    "History",
    "HttpProxy",
    "KVInput",
    "KVOutput",
    "MemoryNetwork",
    "MemoryTransport",
    "Model",
    "Network",
    "Operation",
    "Profile",
    "RaftCluster",
    "RecordingKV",
    "RegisterInput",
    "Result",
    "TcpForwarder",
    "Txn",
    "check",
    "check_kv_ops",
    "check_operations",
    "deterministic_scheduling",
    "partition_by_key",
    "partition_by_keys",
    "register_model",
    "run_simulation",
]
