"""Hypothesis strategies shared by the tests that feed hostile input to a server."""

from __future__ import annotations

import json

from hypothesis import strategies as st

#: Any JSON value (no NaN: the servers' parser refuses it before anything else).
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def objects_with(fields: list[str], max_size: int = 8) -> st.SearchStrategy[dict]:
    """JSON objects whose keys are some of ``fields``, with any values."""
    return st.dictionaries(st.sampled_from(fields), JSON_VALUES, max_size=max_size)


def bodies(shaped: st.SearchStrategy) -> st.SearchStrategy[bytes]:
    """Request bodies: arbitrary bytes, or ``shaped`` values (or any JSON) encoded."""
    return st.binary(max_size=64) | (JSON_VALUES | shaped).map(lambda v: json.dumps(v).encode())
