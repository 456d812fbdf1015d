"""msgpack codec for the message catalogue, strict about everything it reads.

Wire format: a msgpack array `[version, type, sender, payload]`, where
`payload` is a map from field name to value. The rules that keep old and new
nodes talking:

- the version comes first and is checked first; an unsupported version is an
  `UnsupportedVersion` error naming what this node speaks;
- unknown payload fields are ignored, missing optional fields get their
  defaults, missing required fields are an `InvalidField` error; optional
  fields at their default are not encoded at all;
- an unknown message type is an `UnknownMessageType` error;
- extra envelope elements after the payload are ignored (room to grow).

Every failure to decode is a `ProtocolError` subclass; nothing else escapes.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar, Union

import msgpack

from .errors import (
    FrameTooLarge,
    InvalidField,
    LimitExceeded,
    MalformedFrame,
    UnknownMessageType,
    UnsupportedVersion,
)
from .messages import CATALOGUE, Message, Range, ReservedKeys

# Version 3: a host record carries its mesh-wide state (migration counters,
# the rebalancing switch, gateway candidacy, libvirt's reachability) in typed
# fields, and refuses the labels that carried it in version 2. A version 2
# node would ignore those fields (keep rebalancing through a pause, elect a
# second gateway, undercount migrations), so the two do not pretend to speak
# one protocol. Version 2 itself signed membership claims and bounded counters.
PROTOCOL_VERSION = 3
SUPPORTED_VERSIONS: tuple[int, ...] = (3,)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Limits:
    """Upper bounds on what a decoder accepts; anything larger is refused.

    The defaults fit a 10,000-member digest and a record with hundreds of VMs
    while keeping a hostile frame's memory cost to a few MiB.
    """

    max_frame: int = 4 * 1024 * 1024
    max_str: int = 16 * 1024
    max_bin: int = 1024 * 1024
    max_array: int = 100_000
    max_map: int = 100_000
    max_depth: int = 32


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded frame: who sent which message, in which protocol version."""

    version: int
    sender: str
    message: Message


# --- encoding ------------------------------------------------------------------
#
# Converters are compiled once per type from the dataclasses' type hints, so
# encoding and decoding do no reflection per message.

Converter = Callable[[Any], Any]


def encode(message: Message, sender: str, version: int = PROTOCOL_VERSION) -> bytes:
    """Encode `message` from `sender` as one frame."""
    frame = [version, message.TYPE, sender, to_wire(message)]
    return msgpack.packb(frame, use_bin_type=True)  # type: ignore[no-any-return]


def pack_struct(obj: Any) -> bytes:
    """Encode one catalogue dataclass (e.g. a `NodeRecord`) without an envelope."""
    return msgpack.packb(to_wire(obj), use_bin_type=True)  # type: ignore[no-any-return]


def to_wire(obj: Any) -> dict[str, Any]:
    """The plain map (field name to msgpack-ready value) for one catalogue dataclass."""
    return _struct_encoder(type(obj))(obj)  # type: ignore[no-any-return]


_ENCODERS: dict[Any, Converter | None] = {}


def _encoder(hint: Any) -> Converter | None:
    """The function that makes a value of `hint` msgpack-ready; None when it already is."""
    if hint in _ENCODERS:
        return _ENCODERS[hint]
    origin = typing.get_origin(hint)
    encoder: Converter | None = None
    if origin is typing.Annotated:
        encoder = _encoder(typing.get_args(hint)[0])
    elif isinstance(hint, type) and issubclass(hint, Enum):
        encoder = _enum_value
    elif origin is tuple:
        item = _encoder(typing.get_args(hint)[0])
        encoder = list if item is None else _list_of(item)
    elif origin is dict:
        value = _encoder(typing.get_args(hint)[1])
        encoder = None if value is None else _map_of(value)
    elif origin is Union or origin is types.UnionType:
        encoder = _tagged_encoder
    elif dataclasses.is_dataclass(hint):
        encoder = _struct_encoder(hint)  # type: ignore[arg-type]
    _ENCODERS[hint] = encoder
    return encoder


def _enum_value(value: Any) -> Any:
    return value.value


def _list_of(item: Converter) -> Converter:
    return lambda values: [item(v) for v in values]


def _map_of(value: Converter) -> Converter:
    return lambda mapping: {k: value(v) for k, v in mapping.items()}


def _tagged_encoder(value: Any) -> list[Any]:
    # Members of a union (gossip items) carry their type name as a tag.
    return [type(value).TYPE, to_wire(value)]


_STRUCT_ENCODERS: dict[type, Converter] = {}
_REQUIRED = object()  # marks a field without a default: always encoded


def _default(f: dataclasses.Field[Any]) -> Any:
    """A field's default value, or `_REQUIRED`. Optional fields at their default are
    left out of the encoding (so a new optional field changes no existing bytes)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _REQUIRED


def _struct_encoder(cls: type) -> Converter:
    found = _STRUCT_ENCODERS.get(cls)
    if found is not None:
        return found
    hints = typing.get_type_hints(cls, include_extras=True)
    plan = [(f.name, _encoder(hints[f.name]), _default(f)) for f in dataclasses.fields(cls)]

    def encode_struct(obj: Any) -> dict[str, Any]:
        wire = {}
        for name, convert, default in plan:
            value = getattr(obj, name)
            if value is default or (default is not _REQUIRED and value == default):
                continue  # the decoder restores it: fewer bytes on the wire
            wire[name] = value if convert is None else convert(value)
        return wire

    _STRUCT_ENCODERS[cls] = encode_struct
    return encode_struct


# --- decoding ------------------------------------------------------------------


def decode(
    data: bytes,
    limits: Limits = DEFAULT_LIMITS,
    *,
    catalogue: dict[str, type] = CATALOGUE,
    versions: tuple[int, ...] = SUPPORTED_VERSIONS,
) -> Envelope:
    """Decode one frame, or raise a `ProtocolError` saying what is wrong.

    `catalogue` and `versions` default to the mesh's; another wire with the
    same envelope (the site link, `sitelink.py`) passes its own."""
    frame = _unpack(data, limits)
    if not isinstance(frame, list) or len(frame) < 4:
        raise MalformedFrame("frame is not an envelope [version, type, sender, payload]")
    version, type_name, sender, payload = frame[:4]
    if not isinstance(version, int) or isinstance(version, bool):
        raise MalformedFrame(f"protocol version must be an integer, got {type(version).__name__}")
    if version not in versions:
        raise UnsupportedVersion(version, versions)
    if not isinstance(type_name, str):
        raise MalformedFrame("message type must be a string")
    cls = catalogue.get(type_name)
    if cls is None:
        raise UnknownMessageType(f"unknown message type {type_name[:64]!r}")
    if not isinstance(sender, str) or not sender:
        raise MalformedFrame("sender must be a non-empty string")
    if len(frame) > 4 and not _fits_depth(frame[4:], limits.max_depth - 1):
        raise LimitExceeded(f"nesting deeper than {limits.max_depth} levels")
    message: Message = _struct_from_wire(cls, payload, type_name, limits.max_depth - 1)
    return Envelope(version=version, sender=sender, message=message)


def unpack_struct(cls: type[T], data: bytes, limits: Limits = DEFAULT_LIMITS) -> T:
    """Decode bytes made by `pack_struct` back into `cls`, strictly."""
    return _struct_from_wire(cls, _unpack(data, limits), cls.__name__, limits.max_depth)


def _unpack(data: bytes, limits: Limits) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedFrame(f"frame must be bytes, got {type(data).__name__}")
    if len(data) > limits.max_frame:
        raise FrameTooLarge(f"frame of {len(data)} bytes exceeds the {limits.max_frame}-byte limit")
    if not data:
        raise MalformedFrame("empty frame")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=limits.max_str,
            max_bin_len=limits.max_bin,
            max_array_len=limits.max_array,
            max_map_len=limits.max_map,
            max_ext_len=0,
        )
    except msgpack.exceptions.StackError as exc:
        raise LimitExceeded("nesting deeper than the decoder's stack allows") from exc
    except msgpack.ExtraData as exc:
        raise MalformedFrame("trailing bytes after the envelope") from exc
    except ValueError as exc:
        # msgpack reports over-long fields as ValueError("... exceeds max_..._len")
        text = str(exc)
        if "exceeds max" in text:
            raise LimitExceeded(f"field length over limit: {text}") from exc
        raise MalformedFrame(f"not valid msgpack: {text}") from exc
    except Exception as exc:  # any other msgpack failure is still bad input
        raise MalformedFrame(f"not valid msgpack: {type(exc).__name__}: {exc}") from exc
    return obj


def _check_unknown_depth(wire: dict[str, Any], known: frozenset[str], room: int) -> None:
    for name, value in wire.items():
        if name not in known and not _fits_depth(value, room):
            raise _FieldError(f".{name[:32]}", "unknown field nested too deep", too_deep=True)


def _fits_depth(obj: Any, room: int) -> bool:
    """Whether `obj` has at most `room` levels of containers (iteratively: no recursion)."""
    stack: list[tuple[Any, int]] = [(obj, room)]
    while stack:
        item, left = stack.pop()
        if isinstance(item, list):
            children: Any = item
        elif isinstance(item, dict):
            children = item.values()
        else:
            continue
        if left <= 0:
            return False
        stack.extend((child, left - 1) for child in children)
    return True


class _FieldError(Exception):
    """Raised inside converters; `decode` adds where it happened and re-raises it."""

    def __init__(
        self, path: str, text: str, unknown_type: bool = False, too_deep: bool = False
    ) -> None:
        self.path = path
        self.text = text
        self.unknown_type = unknown_type
        self.too_deep = too_deep

    def at(self, prefix: str) -> _FieldError:
        self.path = prefix + self.path
        return self


def _struct_from_wire(cls: type[T], wire: Any, where: str, max_depth: int) -> T:
    try:
        return _struct_decoder(cls)(wire, max_depth - 1)  # type: ignore[no-any-return]
    except _FieldError as exc:
        text = f"{where}{exc.path}: {exc.text}"
        if exc.too_deep:
            raise LimitExceeded(text) from None
        raise (UnknownMessageType(text) if exc.unknown_type else InvalidField(text)) from None


# A decoder takes the wire value and `room`, the number of container levels
# still allowed below it, which enforces Limits.max_depth without a separate
# walk over the whole frame.
Decoder = Callable[[Any, int], Any]

_DECODERS: dict[Any, Decoder] = {}


def _too_deep() -> _FieldError:
    return _FieldError("", "nested deeper than the depth limit", too_deep=True)


def _decoder(hint: Any) -> Decoder:
    """The function that checks a wire value against `hint` and converts it."""
    found = _DECODERS.get(hint)
    if found is None:
        found = _DECODERS[hint] = _make_decoder(hint)
    return found


def _make_decoder(hint: Any) -> Decoder:
    scalar = _SCALAR_DECODERS.get(hint)
    if scalar is not None:
        return scalar
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        base, *extras = typing.get_args(hint)
        bounds = next((e for e in extras if isinstance(e, Range)), None)
        if base in (int, float) and bounds is not None:
            return _bounded_decoder(_decoder(base), bounds)
        reserved = next((e for e in extras if isinstance(e, ReservedKeys)), None)
        if reserved is not None:
            return _reserved_keys_decoder(_decoder(base), reserved)
        return _decoder(base)
    if isinstance(hint, type) and issubclass(hint, Enum):
        return _enum_decoder(hint)
    if origin is tuple:
        return _tuple_decoder(_decoder(typing.get_args(hint)[0]))
    if origin is dict:
        key_hint, value_hint = typing.get_args(hint)
        return _dict_decoder(_decoder(key_hint), _decoder(value_hint))
    if origin is Union or origin is types.UnionType:
        return _tagged_decoder(typing.get_args(hint))
    if dataclasses.is_dataclass(hint):
        return _struct_decoder(hint)  # type: ignore[arg-type]
    raise TypeError(f"codec cannot decode type {hint!r}")  # a catalogue bug, found at import


def _decode_bool(value: Any, room: int) -> bool:
    if value is True or value is False:
        return value
    raise _FieldError("", f"expected a boolean, got {_kind(value)}")


def _decode_int(value: Any, room: int) -> int:
    if type(value) is int:
        return value
    raise _FieldError("", f"expected an integer, got {_kind(value)}")


def _bounded_decoder(base: Decoder, bounds: Range) -> Decoder:
    def decode_bounded(value: Any, room: int) -> Any:
        number = base(value, room)  # its type first: a string is not "out of range"
        if not bounds.low <= number <= bounds.high:
            raise _FieldError(
                "", f"{number} is outside {_plain(bounds.low)}..{_plain(bounds.high)}"
            )
        return number

    return decode_bounded


def _plain(bound: float) -> str:
    """A bound as people write it: whole numbers without a fraction or an exponent."""
    return str(int(bound)) if float(bound).is_integer() else repr(bound)


def _reserved_keys_decoder(base: Decoder, reserved: ReservedKeys) -> Decoder:
    def decode_reserved(value: Any, room: int) -> Any:
        mapping = base(value, room)  # keys are strings once the map's own type holds
        for key in mapping:
            if key.startswith(reserved.prefix):
                raise _FieldError(f"[{key[:64]!r}]", f"{reserved.prefix!r} keys are {reserved.why}")
        return mapping

    return decode_reserved


def _decode_float(value: Any, room: int) -> float:
    if type(value) is float or type(value) is int:
        if math.isfinite(value):
            return float(value)
        raise _FieldError("", f"expected a finite number, got {value!r}")
    raise _FieldError("", f"expected a number, got {_kind(value)}")


def _decode_str(value: Any, room: int) -> str:
    if type(value) is str:
        return value
    raise _FieldError("", f"expected a string, got {_kind(value)}")


def _decode_bytes(value: Any, room: int) -> bytes:
    if type(value) is bytes:
        return value
    raise _FieldError("", f"expected bytes, got {_kind(value)}")


_SCALAR_DECODERS: dict[Any, Decoder] = {
    bool: _decode_bool,
    int: _decode_int,
    float: _decode_float,
    str: _decode_str,
    bytes: _decode_bytes,
}


def _enum_decoder(enum: type[Enum]) -> Decoder:
    allowed = ", ".join(str(m.value) for m in enum)

    def decode_enum(value: Any, room: int) -> Enum:
        # Only a scalar can name a member; anything else (a container nested
        # a thousand deep, say) is refused by its kind, never looked up or printed.
        if type(value) not in (str, int):
            raise _FieldError("", f"expected one of {allowed}, got {_kind(value)}")
        try:
            return enum(value)
        except ValueError:
            raise _FieldError("", f"{str(value)[:32]!r} is not one of {allowed}") from None

    return decode_enum


def _tuple_decoder(item: Decoder) -> Decoder:
    def decode_tuple(value: Any, room: int) -> tuple[Any, ...]:
        if type(value) is not list:
            raise _FieldError("", f"expected an array, got {_kind(value)}")
        if room <= 0:
            raise _too_deep()
        out = []
        for i, v in enumerate(value):
            try:
                out.append(item(v, room - 1))
            except _FieldError as exc:
                raise exc.at(f"[{i}]") from None
        return tuple(out)

    return decode_tuple


def _dict_decoder(key: Decoder, item: Decoder) -> Decoder:
    def decode_dict(value: Any, room: int) -> dict[Any, Any]:
        if type(value) is not dict:
            raise _FieldError("", f"expected a map, got {_kind(value)}")
        if room <= 0:
            raise _too_deep()
        out = {}
        for k, v in value.items():
            try:
                out[key(k, room - 1)] = item(v, room - 1)
            except _FieldError as exc:
                raise exc.at(f"[{str(k)[:32]!r}]") from None
        return out

    return decode_dict


def _tagged_decoder(choices: tuple[type, ...]) -> Decoder:
    by_type = {getattr(cls, "TYPE", cls.__name__): _struct_decoder(cls) for cls in choices}

    def decode_tagged(value: Any, room: int) -> Any:
        if type(value) is not list or len(value) != 2 or type(value[0]) is not str:
            raise _FieldError("", f"expected [type, payload], got {_kind(value)}")
        if room <= 0:
            raise _too_deep()
        decode_item = by_type.get(value[0])
        if decode_item is None:
            raise _FieldError("", f"{value[0][:64]!r} is not allowed here", unknown_type=True)
        try:
            return decode_item(value[1], room - 1)
        except _FieldError as exc:
            raise exc.at(f"<{value[0]}>") from None

    return decode_tagged


_STRUCT_DECODERS: dict[type, Decoder] = {}


def _struct_decoder(cls: type) -> Decoder:
    found = _STRUCT_DECODERS.get(cls)
    if found is not None:
        return found
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = dataclasses.fields(cls)
    required = [
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    # Placeholder first: a struct may (indirectly) contain itself.
    _STRUCT_DECODERS[cls] = lambda wire, room: decode_struct(wire, room)
    plan = [(f.name, _decoder(hints[f.name])) for f in fields]
    known = frozenset(f.name for f in fields)

    def decode_struct(wire: Any, room: int) -> Any:
        if type(wire) is not dict:
            raise _FieldError("", f"expected a map, got {_kind(wire)}")
        if room <= 0:
            raise _too_deep()
        kwargs = {}
        for name, convert in plan:
            if name in wire:
                try:
                    kwargs[name] = convert(wire[name], room - 1)
                except _FieldError as exc:
                    raise exc.at(f".{name}") from None
        if len(kwargs) < len(wire):  # unknown fields are ignored, but not unbounded
            _check_unknown_depth(wire, known, room - 1)
        if len(kwargs) < len(plan):
            for name in required:
                if name not in kwargs:
                    raise _FieldError("", f"required field {name!r} is missing")
        return cls(**kwargs)

    _STRUCT_DECODERS[cls] = decode_struct
    return decode_struct


def _kind(value: Any) -> str:
    return "nil" if value is None else type(value).__name__
