"""Pure logic without an event loop: the codec and the versioned KV state machine."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from trioraft import BadRequest, VersionedKV
from trioraft.kv.messages import (
    BatchArgs,
    BatchOp,
    GetReply,
    OpResult,
    PutArgs,
    PutReply,
    TxnArgs,
    WatchArgs,
)
from trioraft.raft.messages import AppendEntriesArgs
from trioraft.rpc import codec, http
from trioraft.rpc.codec import decode, encode, json_string_bytes, non_negative


@dataclass(frozen=True)
class Inner:
    n: int = non_negative()


@dataclass(frozen=True)
class Outer:
    name: str
    items: list[Inner]
    maybe: Inner | None = None
    ratio: float = 0.5
    flag: bool = False
    tags: list[str] = field(default_factory=list)


def test_codec_round_trip_and_defaults() -> None:
    msg = Outer("x", [Inner(1), Inner(2)], Inner(3), 1.5, True)
    assert decode(Outer, encode(msg)) == msg
    assert decode(Outer, {"name": "y", "items": [], "extra": 1}) == Outer("y", [])


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"items": []}, "name: missing field"),
        ({"name": "a", "items": [{"n": -1}]}, "items[0].n"),
        ({"name": "a", "items": [{}]}, "items[0].n: missing field"),
        ({"name": "a", "items": {}}, "items: expected a list"),
        ({"name": "a", "items": [], "maybe": 3}, "maybe: expected a JSON object"),
        ({"name": "a", "items": [], "ratio": "1"}, "ratio: expected a number"),
        ({"name": "a", "items": [], "ratio": True}, "ratio: expected a number"),
        ({"name": "a", "items": [], "flag": 1}, "flag: expected a boolean"),
        ({"name": "a", "items": [], "tags": [1]}, "tags[0]: expected a string"),
    ],
)
def test_codec_names_the_bad_field(data: object, where: str) -> None:
    with pytest.raises(BadRequest, match=where.replace("[", r"\[").replace("]", r"\]")):
        decode(Outer, data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)


@given(json_values)
def test_codec_rejects_anything_invalid_with_bad_request(data: object) -> None:
    try:
        decode(PutArgs, data)
    except BadRequest:
        pass


def _near_valid(cls: type) -> st.SearchStrategy[object]:
    """Objects with (some of) ``cls``'s field names, each holding any JSON value or a value
    shaped like the field's own (a list of objects for ``list[Inner]``, and so on)."""
    names = [f.name for f in fields(cls)]
    near = st.integers(-2, 2) | st.sampled_from(["", "get", "put", 10**309, -(10**309), 2**63])
    shaped = near | json_values | st.lists(st.dictionaries(st.text(max_size=5), near), max_size=3)
    return st.dictionaries(st.sampled_from(names), shaped) | json_values


@dataclass(frozen=True)
class Tree:
    name: str
    children: list[Tree] = field(default_factory=list)


MESSAGES = [
    Tree,
    Outer,
    Inner,
    PutArgs,
    BatchOp,
    BatchArgs,
    OpResult,
    TxnArgs,
    WatchArgs,
    AppendEntriesArgs,
]


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda cls: cls.__name__)
@settings(max_examples=300)
@given(data=st.data())
def test_compiled_decoder_agrees_with_the_reference_decoder(cls: type, data: st.DataObject) -> None:
    value = data.draw(_near_valid(cls))
    compiled = codec._decoder_of(cls)
    try:
        expected = codec._decode_slowly(cls, value)
    except codec._Invalid as refused:
        with pytest.raises(codec._Invalid) as compiled_refused:
            compiled(value)
        assert compiled_refused.value.describe() == refused.describe()
        return
    assert compiled(value) == expected
    assert decode(cls, encode(expected)) == expected  # omitted defaults come back too


def test_a_number_past_a_float_s_range_is_refused() -> None:
    """``float(10**309)`` overflows: the decoder must refuse it, not raise OverflowError."""
    with pytest.raises(BadRequest, match="wait: a number out of range"):
        decode(WatchArgs, {"prefix": "", "wait": 10**309})
    with pytest.raises(BadRequest, match="ratio: a number out of range"):
        decode(Outer, {"name": "a", "items": [], "ratio": -(10**400)})


#: How many ``Counted`` messages were built.
counted_built = [0]


@dataclass(frozen=True)
class Counted:
    n: int = non_negative()

    def __post_init__(self) -> None:
        counted_built[0] += 1


@dataclass(frozen=True)
class Holder:
    items: list[Counted]


@dataclass(frozen=True)
class Outermost:
    holder: Holder


def test_an_invalid_item_late_in_a_long_list_costs_one_pass() -> None:
    """A refusal is described from the one value refused: decoding a list whose last item
    is invalid builds each earlier item once, never again per nesting level nor by the
    reference decoder."""
    items = [{"n": k} for k in range(1000)] + [{"n": -1}]
    counted_built[0] = 0
    with pytest.raises(BadRequest, match=r"holder\.items\[1000\]\.n: -1 is out of range"):
        decode(Outermost, {"holder": {"items": items}})
    assert counted_built[0] == 1000


def test_a_message_nested_in_itself_decodes() -> None:
    tree = Tree("a", [Tree("b"), Tree("c", [Tree("d")])])
    assert decode(Tree, encode(tree)) == tree
    with pytest.raises(BadRequest, match=r"children\[1\]\.children\[0\]\.name"):
        decode(Tree, {"name": "a", "children": [{"name": "b"}, {"name": "c", "children": [{}]}]})


def test_compiled_codec_round_trips_nested_messages() -> None:
    msg = Outer("x", [Inner(1), Inner(2)], Inner(3), 1.5, True, ["a"])
    assert codec._compile_encoder(Outer)(msg) == {
        "name": "x",
        "items": [{"n": 1}, {"n": 2}],
        "maybe": {"n": 3},
        "ratio": 1.5,
        "flag": True,
        "tags": ["a"],
    }
    assert decode(Outer, {"name": "x", "items": [{"n": 1}], "ratio": 2}) == Outer(
        "x", [Inner(1)], ratio=2.0
    )


@codec.omit_defaults
@dataclass(frozen=True)
class Sparse:
    kind: str
    count: int = 0
    note: str | None = None
    flag: bool = False
    tags: list[str] = field(default_factory=list)


@given(st.text(), st.sampled_from(["", "a", "\\", '"', "\n", "\x7f", "é", "😀"]))
def test_json_string_bytes_is_what_json_dumps_sends(text: str, filler: str) -> None:
    """Exact for any string, short or long (a long one's size is remembered: asked
    twice, and for an equal string, the answer is the same), and never more than 12 bytes
    a character (what ``bound_reply``'s quick check counts on)."""
    for candidate in (text, text + filler * (1 << 16)):
        expected = len(json.dumps(candidate)) - 2
        assert expected <= 12 * len(candidate)
        assert json_string_bytes(candidate) == expected
        assert json_string_bytes(candidate) == expected
        assert json_string_bytes("".join([candidate])) == expected


def stdlib_parse(body: bytes) -> object:
    """What the standard library's parser makes of ``body`` (NaN and Infinity refused)."""

    def refuse(name: str) -> float:
        raise ValueError(name)

    return json.loads(str(body, "utf-8"), parse_constant=refuse)


#: JSON values as bodies carry them, with what orjson alone refuses or writes otherwise:
#: lone surrogates, integers past 64 bits, non-ASCII text.
body_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=())),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def holds_a_float(value: object) -> bool:
    if isinstance(value, dict):
        return any(holds_a_float(v) for v in value.values())
    if isinstance(value, list):
        return any(holds_a_float(v) for v in value)
    return isinstance(value, float)


@given(body_values)
@example(6.103515625e-05)  # orjson writes it as 0.00006103515625: a byte longer
def test_dump_json_writes_what_parses_back_never_longer_than_the_escaped_form(value) -> None:
    """Never longer where the size bounds count (strings: our replies hold no floats)."""
    body = http.dump_json(value)
    assert stdlib_parse(body) == value
    assert http.parse_json(body) == value
    if not holds_a_float(value):
        assert len(body) <= len(json.dumps(value, separators=(",", ":")).encode())


@given(st.binary(max_size=40) | body_values.map(lambda v: json.dumps(v).encode()))
def test_parse_json_takes_exactly_what_the_standard_library_takes(body: bytes) -> None:
    try:
        expected = stdlib_parse(body)
    except (ValueError, RecursionError):
        with pytest.raises(BadRequest):
            http.parse_json(body)
        return
    assert http.parse_json(body) == expected


@pytest.mark.parametrize(
    "body",
    [b'"\\ud800"', b"18446744073709551616", b'{"a": 1, "a": 2}', b"[1.5e308, -0]"],
)
def test_parse_json_takes_what_orjson_refuses_as_the_standard_library_does(body: bytes) -> None:
    assert http.parse_json(body) == stdlib_parse(body)


@pytest.mark.parametrize(
    "body", [b"NaN", b"[Infinity]", b"\xff", b"", b'{"a": }', b"\xef\xbb\xbf1"]
)
def test_parse_json_refuses_what_is_not_json(body: bytes) -> None:
    with pytest.raises(BadRequest):
        http.parse_json(body)


#: Values as a log entry's ops hold them (no floats), with any text: control characters,
#: DEL, non-ASCII, lone surrogates; and integers past 64 bits.
tricky = st.sampled_from(["\x7f", "\x00", "\x1f", "\n", '"', "\\", "/", "é", "\u2028", "\ud800"])
ops_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.text(st.characters(max_codepoint=127))  # ASCII: orjson's text is kept unless DEL
    | st.text(st.characters(blacklist_categories=()) | tricky),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(ops_values)
@example(["del \x7f", 1])  # ASCII that the standard library escapes and orjson does not
@example({"k": 2**64, "v": "x"})
def test_compact_json_is_the_standard_library_s_text(value) -> None:
    """The log's commands keep their form, character for character."""
    assert codec.compact_json(value) == json.dumps(value, separators=(",", ":"))


def test_a_class_marked_omit_defaults_sends_only_what_differs() -> None:
    assert encode(Sparse("a")) == {"kind": "a", "tags": []}  # a factory's value is kept
    sparse = Sparse("a", 0, "", True, ["t"])
    assert encode(sparse) == {"kind": "a", "note": "", "flag": True, "tags": ["t"]}
    assert decode(Sparse, encode(sparse)) == sparse
    assert encode(BatchOp("get", "k")) == {"op": "get", "key": "k"}
    put = BatchOp("put", "k", "v", 0, retry_after=0)
    assert encode(put) == {"op": "put", "key": "k", "value": "v", "retry_after": 0}


@given(st.dictionaries(st.sampled_from(["key", "value", "version"]), json_values))
def test_codec_put_args_fuzz(data: dict) -> None:
    try:
        args = decode(PutArgs, data)
    except BadRequest:
        return
    assert isinstance(args.key, str) and isinstance(args.value, str)
    assert isinstance(args.version, int) and args.version >= 0


def test_kv_versions() -> None:
    kv = VersionedKV()
    assert kv.get("k") == GetReply("", 0, "NoKey")
    assert kv.put("k", "a", 1) == PutReply("NoKey")
    assert kv.put("k", "a", 0) == PutReply("OK")
    assert kv.get("k") == GetReply("a", 1, "OK")
    assert kv.put("k", "b", 0) == PutReply("Version")
    assert kv.put("k", "b", 2) == PutReply("Version")
    assert kv.put("k", "b", 1) == PutReply("OK")
    assert kv.get("k") == GetReply("b", 2, "OK")
    assert kv.put("k", "", 2) == PutReply("OK")
    assert kv.get("k") == GetReply("", 3, "OK")  # an empty value still exists
    assert len(kv) == 1


@given(st.lists(st.tuples(st.sampled_from("ab"), st.text(max_size=3), st.integers(0, 4))))
def test_kv_matches_a_naive_model(puts: list[tuple[str, str, int]]) -> None:
    kv = VersionedKV()
    model: dict[str, tuple[str, int]] = {}
    for key, value, version in puts:
        current = model.get(key, ("", 0))
        reply = kv.put(key, value, version)
        if version == current[1]:
            assert reply.err == "OK"
            model[key] = (value, version + 1)
        else:
            assert reply.err == ("NoKey" if current[1] == 0 else "Version")
    for key in "ab":
        value, version = model.get(key, ("", 0))
        assert kv.get(key) == GetReply(value, version, "OK" if version else "NoKey")


def test_every_public_name_resolves() -> None:
    import trioraft
    import trioraft.testing

    for module in (trioraft, trioraft.testing):
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert missing == [], f"{module.__name__}.__all__ names missing objects: {missing}"
