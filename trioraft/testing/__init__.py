"""The trioraft test kit: fault injection, history recording and linearizability checking.

Usable for testing any Trio service that speaks HTTP: put an :class:`HttpProxy` in front of
each server, drive faults through one seeded :class:`Network`, record what clients see with a
:class:`History`, and :func:`check` it.
"""

from ._history import History, RecordingKV
from ._linearizability import Operation, Result, check
from ._network import MIT_UNRELIABLE, RELIABLE, UNRELIABLE, Fate, Network, Profile
from ._proxy import HttpProxy

__all__ = [
    "MIT_UNRELIABLE",
    "RELIABLE",
    "UNRELIABLE",
    "Fate",
    "History",
    "HttpProxy",
    "Network",
    "Operation",
    "Profile",
    "RecordingKV",
    "Result",
    "check",
]
