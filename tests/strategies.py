"""Hypothesis strategies that build any message of the catalogue from its type hints."""

from __future__ import annotations

import dataclasses
import types
import typing
from enum import Enum
from typing import Any, Union

from hypothesis import strategies as st

from novacron.protocol.messages import CATALOGUE, Range, ReservedKeys

_text = st.text(max_size=24)
_ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
_floats = st.floats(allow_nan=False, allow_infinity=False)


def for_hint(hint: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """A strategy for values of `hint`, as the catalogue uses them."""
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        base, *extras = typing.get_args(hint)
        bounds = next((e for e in extras if isinstance(e, Range)), None)
        if base is int and bounds is not None:
            return st.integers(int(bounds.low), int(bounds.high))
        if base is float and bounds is not None:
            return st.floats(bounds.low, bounds.high)
        reserved = next((e for e in extras if isinstance(e, ReservedKeys)), None)
        if reserved is not None:  # a map the codec accepts: no key under the reserved prefix
            return for_hint(base, depth).map(
                lambda mapping: {
                    k: v for k, v in mapping.items() if not k.startswith(reserved.prefix)
                }
            )
        return for_hint(base, depth)
    simple: dict[Any, st.SearchStrategy[Any]] = {
        bool: st.booleans(),
        int: _ints,
        float: _floats,
        str: _text,
        bytes: st.binary(max_size=64),
    }
    if hint in simple:
        return simple[hint]
    if isinstance(hint, type) and issubclass(hint, Enum):
        return st.sampled_from(list(hint))
    if origin is tuple:
        return st.lists(for_hint(typing.get_args(hint)[0], depth + 1), max_size=3).map(tuple)
    if origin is dict:
        key, value = typing.get_args(hint)
        return st.dictionaries(for_hint(key), for_hint(value, depth + 1), max_size=3)
    if origin is Union or origin is types.UnionType:
        return st.one_of([for_hint(choice, depth + 1) for choice in typing.get_args(hint)])
    if dataclasses.is_dataclass(hint):
        return for_struct(hint)  # type: ignore[arg-type]
    raise TypeError(f"no strategy for {hint!r}")


def for_struct(cls: type) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: _deferred(hints[f.name]) for f in dataclasses.fields(cls)}
    return st.builds(cls, **fields)


def _deferred(hint: Any) -> st.SearchStrategy[Any]:
    # Deferred so that recursive structures are built lazily.
    def build() -> st.SearchStrategy[Any]:
        return for_hint(hint)

    return st.deferred(build)


def any_message() -> st.SearchStrategy[Any]:
    return st.one_of([for_struct(cls) for cls in CATALOGUE.values()])


node_ids = st.text(min_size=1, max_size=32)


@st.composite
def mutations(draw: st.DrawFn, original: bytes) -> bytes:
    """`original` with random bits flipped, bytes overwritten, cut, or inserted."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 16))]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    mutated = bytes(data)
    return mutated if mutated != original else mutated + b"\x00"
