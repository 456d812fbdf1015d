"""msgpack codec for the message catalogue, strict about everything it reads.

Wire format: a msgpack array `[version, type, sender, payload]`, where
`payload` is a map from field name to value. The rules that keep old and new
nodes talking:

- the version comes first and is checked first; an unsupported version is an
  `UnsupportedVersion` error naming what this node speaks;
- unknown payload fields are ignored, missing optional fields get their
  defaults, missing required fields are an `InvalidField` error;
- an unknown message type is an `UnknownMessageType` error;
- extra envelope elements after the payload are ignored (room to grow).

Every failure to decode is a `ProtocolError` subclass; nothing else escapes.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar, Union

import msgpack

from .errors import (
    FrameTooLarge,
    InvalidField,
    LimitExceeded,
    MalformedFrame,
    ProtocolError,
    UnknownMessageType,
    UnsupportedVersion,
)
from .messages import CATALOGUE, Message

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)

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


def encode(message: Message, sender: str, version: int = PROTOCOL_VERSION) -> bytes:
    """Encode `message` from `sender` as one frame."""
    frame = [version, message.TYPE, sender, _struct_to_wire(message)]
    return msgpack.packb(frame, use_bin_type=True)  # type: ignore[no-any-return]


def pack_struct(obj: Any) -> bytes:
    """Encode one catalogue dataclass (e.g. a `NodeRecord`) without an envelope."""
    return msgpack.packb(_struct_to_wire(obj), use_bin_type=True)  # type: ignore[no-any-return]


def _to_wire(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        wire = _struct_to_wire(value)
        # Members of a union (gossip items) carry their type name as a tag.
        type_name = getattr(type(value), "TYPE", None)
        return [type_name, wire] if type_name is not None else wire
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_wire(v) for k, v in value.items()}
    return value


def _struct_to_wire(obj: Any) -> dict[str, Any]:
    return {f.name: _to_wire(getattr(obj, f.name)) for f in _fields(type(obj))}


# --- decoding ------------------------------------------------------------------


def decode(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Envelope:
    """Decode one frame, or raise a `ProtocolError` saying what is wrong."""
    frame = _unpack(data, limits)
    if not isinstance(frame, list) or len(frame) < 4:
        raise MalformedFrame("frame is not an envelope [version, type, sender, payload]")
    version, type_name, sender, payload = frame[:4]
    if not isinstance(version, int) or isinstance(version, bool):
        raise MalformedFrame(f"protocol version must be an integer, got {type(version).__name__}")
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedVersion(version, SUPPORTED_VERSIONS)
    if not isinstance(type_name, str):
        raise MalformedFrame("message type must be a string")
    cls = CATALOGUE.get(type_name)
    if cls is None:
        raise UnknownMessageType(f"unknown message type {type_name[:64]!r}")
    if not isinstance(sender, str) or not sender:
        raise MalformedFrame("sender must be a non-empty string")
    message: Message = _struct_from_wire(cls, payload, type_name)
    return Envelope(version=version, sender=sender, message=message)


def unpack_struct(cls: type[T], data: bytes, limits: Limits = DEFAULT_LIMITS) -> T:
    """Decode bytes made by `pack_struct` back into `cls`, strictly."""
    return _struct_from_wire(cls, _unpack(data, limits), cls.__name__)


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
    _check_depth(obj, limits.max_depth)
    return obj


def _check_depth(obj: Any, max_depth: int) -> None:
    """Refuse structures nested deeper than `max_depth` (iteratively: no recursion)."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, list):
            children: Any = item
        elif isinstance(item, dict):
            children = item.values()
        else:
            continue
        if depth > max_depth:
            raise LimitExceeded(f"nesting deeper than {max_depth} levels")
        stack.extend((child, depth + 1) for child in children)


_FIELDS: dict[type, tuple[dataclasses.Field[Any], ...]] = {}
_HINTS: dict[type, dict[str, Any]] = {}


def _fields(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    found = _FIELDS.get(cls)
    if found is None:
        found = _FIELDS[cls] = dataclasses.fields(cls)
    return found


def _hints(cls: type) -> dict[str, Any]:
    found = _HINTS.get(cls)
    if found is None:
        found = _HINTS[cls] = typing.get_type_hints(cls)
    return found


def _struct_from_wire(cls: type[T], wire: Any, where: str) -> T:
    if not isinstance(wire, dict):
        raise InvalidField(f"{where}: expected a map, got {_kind(wire)}")
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in _fields(cls):
        if f.name in wire:
            kwargs[f.name] = _from_wire(hints[f.name], wire[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise InvalidField(f"{where}: required field {f.name!r} is missing")
    return cls(**kwargs)


def _from_wire(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise InvalidField(f"{where}: expected a boolean, got {_kind(value)}")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidField(f"{where}: expected an integer, got {_kind(value)}")
        return value
    if hint is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise InvalidField(f"{where}: expected a number, got {_kind(value)}")
        if not math.isfinite(value):
            raise InvalidField(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise InvalidField(f"{where}: expected a string, got {_kind(value)}")
        return value
    if hint is bytes:
        if not isinstance(value, bytes):
            raise InvalidField(f"{where}: expected bytes, got {_kind(value)}")
        return value
    if isinstance(hint, type) and issubclass(hint, Enum):
        try:
            return hint(value)
        except (ValueError, TypeError):
            allowed = ", ".join(str(m.value) for m in hint)
            raise InvalidField(f"{where}: {str(value)[:32]!r} is not one of {allowed}") from None
    if origin is tuple:
        item_hint = typing.get_args(hint)[0]
        if not isinstance(value, list):
            raise InvalidField(f"{where}: expected an array, got {_kind(value)}")
        return tuple(_from_wire(item_hint, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        key_hint, value_hint = typing.get_args(hint)
        if not isinstance(value, dict):
            raise InvalidField(f"{where}: expected a map, got {_kind(value)}")
        return {
            _from_wire(key_hint, k, f"{where} key"): _from_wire(value_hint, v, f"{where}[{k!r}]")
            for k, v in value.items()
        }
    if origin is Union or origin is types.UnionType:
        return _tagged_from_wire(typing.get_args(hint), value, where)
    if dataclasses.is_dataclass(hint):
        return _struct_from_wire(hint, value, where)  # type: ignore[arg-type]
    raise ProtocolError(f"{where}: codec cannot decode type {hint!r}")  # a catalogue bug


def _tagged_from_wire(choices: tuple[type, ...], value: Any, where: str) -> Any:
    if not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], str):
        raise InvalidField(f"{where}: expected [type, payload], got {_kind(value)}")
    type_name, payload = value
    for cls in choices:
        if getattr(cls, "TYPE", None) == type_name:
            return _struct_from_wire(cls, payload, f"{where}<{type_name}>")
    raise UnknownMessageType(f"{where}: {type_name[:64]!r} is not allowed here")


def _kind(value: Any) -> str:
    return "nil" if value is None else type(value).__name__
