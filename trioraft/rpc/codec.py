"""Typed JSON codecs for frozen dataclass messages, with validation of untrusted input.

Every RPC message is a frozen dataclass whose fields are annotated with one of: ``str``,
``int``, ``bool``, ``float``, ``list[T]``, ``T | None`` or another message dataclass.
:func:`decode` turns a parsed JSON value into such a message or raises
:class:`~trioraft.BadRequest` naming the offending field; :func:`encode` is its inverse.

Invariants:
- ``decode(cls, encode(msg)) == msg`` for every valid message.
- ``decode`` never raises anything but ``BadRequest`` for any JSON value it is given.
- Integers are 64-bit signed and never ``bool``; a field declared with
  ``field(metadata={"min": m})`` rejects values below ``m``. Unknown keys are ignored.
- Each message class gets one decoder and one encoder compiled from its fields on first
  use (straight-line code: a generic loop over the fields cost three times as much per
  message). :func:`_decode_slowly`, field by field, is the reference: the compiled decoder
  accepts what it accepts, and refuses the rest with the same description. To describe a
  refusal it asks the reference about the one value refused, so an invalid body costs
  about what a valid one does up to its fault.
- A class marked :func:`omit_defaults` is encoded without the fields that equal their
  defaults; decoding puts them back, so the round trip still holds.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Callable
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any, TypeVar

import orjson

from .._errors import BadRequest

T = TypeVar("T")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def json_string_bytes(text: str) -> int:
    """The bytes ``text`` takes inside a JSON string as our messages send it
    (``json.dumps``, ASCII-escaped): a non-ASCII character takes 6 bytes, one beyond the
    BMP 12. Cheap for printable ASCII, which escapes only quotes and backslashes; a long
    string's size is remembered (:func:`_long_json_string_bytes`)."""
    if len(text) >= _REMEMBERED_CHARS:
        return _long_json_string_bytes(text)
    return _measure_json_string(text)


def _measure_json_string(text: str) -> int:
    if text.isascii() and text.isprintable():
        return len(text) + text.count('"') + text.count("\\")
    return len(encode_basestring_ascii(text)) - 2


def dump_json(payload: Any) -> bytes:
    """``payload`` (JSON-able: dicts with string keys, lists, strings, numbers, booleans,
    ``None``) as a UTF-8 JSON body: orjson's (compact, non-ASCII characters as UTF-8, so
    its strings are never longer than the ASCII-escaped form the size bounds count; a
    float may take a byte or two more than the standard library's, and replies hold none),
    or for what orjson refuses (a string with a lone surrogate, an integer past 64 bits)
    the standard library's. Raises ``TypeError`` or ``ValueError`` for what is not
    JSON-able."""
    try:
        return orjson.dumps(payload)
    except orjson.JSONEncodeError:
        return stdlib_json(payload).encode()


def stdlib_json(value: Any) -> str:
    """``value`` as the standard library writes it, compact and ASCII-escaped: the form of
    the log's commands and of what must read the same whichever parser wrote it."""
    return json.dumps(value, separators=(",", ":"))


def compact_json(value: Any) -> str:
    """``value`` as the standard library writes it compact (``separators=(",", ":")``) and
    ASCII-escaped, character for character (the log's commands are in this form):
    :func:`dump_json`'s text where it is the same (ASCII without DEL, which only the
    standard library escapes), a tenth of the time; the standard library's otherwise. A
    float may be written otherwise (the same value, a byte or two longer): the ops hold
    none."""
    text = dump_json(value)
    if text.isascii() and b"\x7f" not in text:
        return text.decode("ascii")
    return stdlib_json(value)


#: Strings this long or longer have their size remembered: measuring costs ~6 ns a
#: character, and a large entry is measured at submit and again for every AppendEntries
#: that carries it (a 3 MB one cost its leader ~15 ms a time, on its one thread).
_REMEMBERED_CHARS = 1 << 16

#: The last few long strings measured, by value (a lookup of the same string object costs
#: nothing; its hash is kept with it). At most 4 held, each at most a request.
_long_json_string_bytes = functools.lru_cache(maxsize=4)(_measure_json_string)


_Decoder = Callable[[Any], Any]
#: Per message class: (field name, decoder, factory of its default or None if required).
_plans: dict[type, list[tuple[str, _Decoder, Callable[[], Any] | None]]] = {}


def decode(cls: type[T], data: object) -> T:
    """Validate ``data`` (parsed JSON) against message class ``cls`` and build it."""
    try:
        return _decoder_of(cls)(data)  # type: ignore[no-any-return]
    except _Invalid as exc:
        raise BadRequest(exc.describe()) from None


class _Invalid(Exception):
    """What is wrong with a value; the path to it is added on the way out, so that valid
    input, the common case, never pays for formatting one."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        self.path: list[str | int] = []  # innermost first

    def within(self, key: str | int) -> None:
        self.path.append(key)

    def describe(self) -> str:
        where = ""
        for key in reversed(self.path):
            where += f"[{key}]" if isinstance(key, int) else f".{key}" if where else key
        return f"{where or 'body'}: {self.problem}"


def encode(message: object) -> dict[str, Any]:
    """The JSON-ready dict of a message dataclass (nested messages and lists included)."""
    encoder = _encoders.get(type(message))
    if encoder is None:
        encoder = _compile_encoder(type(message))
    return encoder(message)


_Encoder = Callable[[Any], Any]
#: Per message class: its compiled encoder (see :func:`_compile_encoder`).
_encoders: dict[type, Callable[[Any], dict[str, Any]]] = {}


#: Message classes encoded without their fields at default values (:func:`omit_defaults`).
_omitting_defaults: set[type] = set()


def omit_defaults(cls: type[T]) -> type[T]:
    """Mark message class ``cls`` (a decorator): its encoding leaves out every field equal
    to its default. For a request whose kinds each use few of many fields (a batch's ops):
    the receiver parses a fraction of the bytes."""
    _omitting_defaults.add(cls)
    _encoders.pop(cls, None)
    return cls


def _compile_encoder(cls: type) -> Callable[[Any], dict[str, Any]]:
    """One dict display reading each field of ``cls``: as it is when JSON takes it so,
    else through the field's encoder; for a class marked :func:`omit_defaults`, the
    fields with a default each added only when they differ from it."""
    hints = typing.get_type_hints(cls)
    namespace: dict[str, Any] = {}
    items, optional = [], []
    for i, f in enumerate(dataclasses.fields(cls)):
        encoder = _encoder_for(hints[f.name])
        value = f"m.{f.name}"
        if encoder is not None:
            namespace[f"e{i}"] = encoder
            value = f"e{i}({value})"
        if cls in _omitting_defaults and f.default is not dataclasses.MISSING:
            namespace[f"d{i}"] = f.default
            differs = "is not" if f.default is None else "!="
            optional.append(f"    if m.{f.name} {differs} d{i}: d[{f.name!r}] = {value}\n")
        else:
            items.append(f"{f.name!r}: {value}")
    display = f"{{{', '.join(items)}}}"
    if optional:
        body = f"    d = {display}\n{''.join(optional)}    return d\n"
    else:
        body = f"    return {display}\n"
    exec(f"def encode_message(m):\n{body}", namespace)  # names: the class's fields only
    encoder = _encoders[cls] = namespace["encode_message"]
    return encoder


def _encoder_for(tp: Any) -> _Encoder | None:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = _encoder_for(args[0]) if len(args) == 1 else _encode_value
        return None if inner is None else (lambda v: None if v is None else inner(v))
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        item = _encoder_for(item_tp)
        return list if item is None else (lambda v: [item(x) for x in v])
    if dataclasses.is_dataclass(tp):
        return encode
    if tp in (str, int, bool, float):
        return None
    return _encode_value  # anything else: looked at value by value


def _encode_value(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return encode(value)
    if isinstance(value, list | tuple):
        return [_encode_value(v) for v in value]
    return value


def _decoder_of(cls: type) -> Callable[[Any], Any]:
    """The compiled decoder of message class ``cls``, compiled on first use."""
    return _decoders.get(cls) or _compile_decoder(cls)


def _decode_slowly(cls: type[T], data: object) -> T:
    """The reference decoder: field by field (nested messages too), naming the path to a
    value it refuses."""
    if not isinstance(data, dict):
        raise _Invalid("expected a JSON object")
    kwargs = {}
    for name, decoder, default in _plan(cls):
        if name in data:
            try:
                kwargs[name] = decoder(data[name])
            except _Invalid as exc:
                exc.within(name)
                raise
        elif default is None:
            invalid = _Invalid("missing field")
            invalid.within(name)
            raise invalid
        else:
            kwargs[name] = default()
    return cls(**kwargs)


#: Per message class: its compiled decoder (see :func:`_compile_decoder`).
_decoders: dict[type, Callable[[Any], Any]] = {}
_compiling: set[type] = set()
_MISSING = object()


def _compile_decoder(cls: type) -> Callable[[Any], Any]:
    """Straight-line code checking and converting each field of ``cls`` as the reference
    decoder does (the same types, bounds and defaults), then building the message. A value
    refused raises :class:`_Invalid` described as the reference describes it (see
    :func:`_explain`)."""
    _compiling.add(cls)  # before its fields are looked at: one may nest ``cls`` itself
    try:
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)
        namespace: dict[str, Any] = {
            "_Invalid": _Invalid,
            "MISSING": _MISSING,
            "cls": cls,
            "_explain": _explain,
            "_missing": _missing,
        }
        lines = [
            "if not isinstance(data, dict):",
            "    raise _Invalid('expected a JSON object')",
            "get = data.get",
        ]
        for i, f in enumerate(fields):
            value = f"v{i}"
            lines += [f"{value} = get({f.name!r}, MISSING)", f"if {value} is MISSING:"]
            if f.default is not dataclasses.MISSING:
                namespace[f"d{i}"] = f.default
                lines.append(f"    {value} = d{i}")
            elif f.default_factory is not dataclasses.MISSING:
                namespace[f"d{i}"] = f.default_factory
                lines.append(f"    {value} = d{i}()")
            else:
                lines.append(f"    raise _missing({f.name!r})")
            namespace[f"r{i}"] = _decoder_for(hints[f.name], f.metadata)  # the reference
            check = _check(hints[f.name], f.metadata, value, str(i), namespace)
            lines += ["else:", "    try:", *_indent(_indent(check))]
            lines += [
                "    except _Invalid as exc:",
                f"        raise _explain(exc, {f.name!r}, {value}, r{i})",
            ]
        if all(f.init and not f.kw_only for f in fields):
            arguments = ", ".join(f"v{i}" for i in range(len(fields)))
        else:
            arguments = ", ".join(f"{f.name}=v{i}" for i, f in enumerate(fields))
        lines.append(f"return cls({arguments})")
        source = "def decode_message(data):\n" + "\n".join(_indent(lines)) + "\n"
        exec(source, namespace)  # its names are the class's own fields' names only
    finally:
        _compiling.discard(cls)
    decoder = _decoders[cls] = namespace["decode_message"]
    return decoder


def _explain(exc: _Invalid, name: str, value: Any, reference: _Decoder) -> _Invalid:
    """``exc``, raised for field ``name`` holding ``value``, with the path to that field.
    A bare one (the field's own value refused) gets the reference decoder's description."""
    if not exc.problem:
        try:
            reference(value)
        except _Invalid as described:
            exc = described
        else:  # the compiled check refused what the reference takes: refuse it still
            exc = _Invalid("refused")
    exc.within(name)
    return exc


def _missing(name: str) -> _Invalid:
    invalid = _Invalid("missing field")
    invalid.within(name)
    return invalid


def _check(
    tp: Any, metadata: typing.Mapping[str, Any], value: str, tag: str, namespace: dict[str, Any]
) -> list[str]:
    """Statements that refuse ``value`` (a local) unless it fits ``tp`` as
    :func:`_decoder_for` would, converting it in place as that decoder does. A refusal of
    the value itself is a bare :class:`_Invalid`; one inside it (a list's item, a nested
    message's field) comes described, with its path."""
    refuse = "    raise _Invalid('')"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            inner = _check(args[0], metadata, value, tag, namespace)
            return [f"if {value} is not None:", *_indent(inner)]
    elif origin is list:
        (item_tp,) = typing.get_args(tp)
        namespace[f"i{tag}"] = _nested_decoder(item_tp)
        return [
            f"if not isinstance({value}, list):",
            refuse,
            f"items{tag} = []",
            "try:",
            f"    for x in {value}:",
            f"        items{tag}.append(i{tag}(x))",
            "except _Invalid as exc:",
            f"    exc.within(len(items{tag}))  # the index of the item refused",
            "    raise",
            f"{value} = items{tag}",
        ]
    elif dataclasses.is_dataclass(tp):
        namespace[f"c{tag}"] = _nested_decoder(tp)
        return [f"{value} = c{tag}({value})"]
    elif tp is str or tp is bool:
        return [f"if not isinstance({value}, {tp.__name__}):", refuse]
    elif tp is int:
        namespace[f"low{tag}"] = max(INT64_MIN, metadata.get("min", INT64_MIN))
        namespace["INT64_MAX"] = INT64_MAX
        bad_type = f"isinstance({value}, bool) or not isinstance({value}, int)"
        return [f"if {bad_type} or not low{tag} <= {value} <= INT64_MAX:", refuse]
    # Anything else (a float, a dict, a union of several types): the reference decoder.
    namespace[f"s{tag}"] = _decoder_for(tp, metadata)
    return [f"{value} = s{tag}({value})"]


def _nested_decoder(tp: Any) -> Callable[[Any], Any]:
    """What decodes a list item or a nested field of type ``tp`` inside a compiled decoder:
    a message's own compiled decoder (refusals surface to the outermost message, whose
    reference decoder then names the path), anything else's generic decoder."""
    if not dataclasses.is_dataclass(tp):
        return _decoder_for(tp, {})
    if tp in _compiling:  # a message nested in itself: look its decoder up when called
        return lambda v: _decoders[tp](v)
    return _decoder_of(tp)


def _indent(lines: list[str]) -> list[str]:
    return ["    " + line for line in lines]


def _plan(cls: type) -> list[tuple[str, _Decoder, Callable[[], Any] | None]]:
    plan = _plans.get(cls)
    if plan is None:
        hints = typing.get_type_hints(cls)
        plan = [
            (f.name, _decoder_for(hints[f.name], f.metadata), _default(f))
            for f in dataclasses.fields(cls)
        ]
        _plans[cls] = plan
    return plan


def _default(f: dataclasses.Field[Any]) -> Callable[[], Any] | None:
    if f.default is not dataclasses.MISSING:
        value = f.default
        return lambda: value
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory
    return None


def _decoder_for(tp: Any, metadata: typing.Mapping[str, Any]) -> _Decoder:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported union {tp!r}")
        inner = _decoder_for(args[0], metadata)
        return lambda v: None if v is None else inner(v)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        item = _decoder_for(item_tp, {})

        def decode_list(v: Any) -> list[Any]:
            if not isinstance(v, list):
                raise _Invalid("expected a list")
            decoded = []
            for index, x in enumerate(v):
                try:
                    decoded.append(item(x))
                except _Invalid as exc:
                    exc.within(index)
                    raise
            return decoded

        return decode_list
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        key, value = _decoder_for(key_tp, {}), _decoder_for(value_tp, {})

        def decode_dict(v: Any) -> dict[Any, Any]:
            if not isinstance(v, dict):
                raise _Invalid("expected an object")
            decoded = {}
            for k, x in v.items():
                try:
                    decoded[key(k)] = value(x)
                except _Invalid as exc:
                    exc.within(str(k))
                    raise
            return decoded

        return decode_dict
    if dataclasses.is_dataclass(tp):
        return lambda v: _decode_slowly(tp, v)
    if tp is str:
        return _expect(str, "a string")
    if tp is bool:
        return _expect(bool, "a boolean")
    if tp is float:

        def decode_float(v: Any) -> float:
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise _Invalid("expected a number")
            try:
                return float(v)
            except OverflowError:  # an integer past a float's range
                raise _Invalid("a number out of range") from None

        return decode_float
    if tp is int:
        low = max(INT64_MIN, metadata.get("min", INT64_MIN))

        def decode_int(v: Any) -> int:
            if isinstance(v, bool) or not isinstance(v, int):
                raise _Invalid("expected an integer")
            if not low <= v <= INT64_MAX:
                raise _Invalid(f"{v} is out of range [{low}, {INT64_MAX}]")
            return v

        return decode_int
    raise TypeError(f"unsupported field type {tp!r}")


def _expect(kind: type, description: str) -> _Decoder:
    def check(v: Any) -> Any:
        if not isinstance(v, kind) or (kind is not bool and isinstance(v, bool)):
            raise _Invalid(f"expected {description}")
        return v

    return check


def non_negative(default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field holding an integer that must be ``>= 0``."""
    return dataclasses.field(default=default, metadata={"min": 0})
