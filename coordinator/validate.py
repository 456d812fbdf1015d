"""Request bodies checked against the OpenAPI document's schemas: the document is the rule.

A small validator for the JSON Schema the document uses (type, properties,
required, additionalProperties, propertyNames, maxProperties, enum, minimum,
maximum, minLength, maxLength, pattern, items, maxItems, $ref, allOf). A
failure is `Invalid` naming the field (`constraints.labels.region`) and what
is wrong with it, so a client fixes the right thing.
"""

from __future__ import annotations

import dataclasses
import math
import re
from functools import cache
from typing import Any

TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


class Invalid(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


@cache
def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(text)


class Validator:
    def __init__(self, document: dict[str, Any]) -> None:
        self._schemas = document["components"]["schemas"]

    def check(self, value: Any, schema: dict[str, Any], at: str = "") -> None:
        if "$ref" in schema:
            self.check(value, self._schemas[schema["$ref"].rsplit("/", 1)[1]], at)
            return
        for part in schema.get("allOf", ()):
            self.check(value, part, at)
        kinds = schema.get("type")
        if kinds is not None:
            _check_type(value, [kinds] if isinstance(kinds, str) else kinds, at)
        if "enum" in schema and value not in schema["enum"]:
            raise Invalid(at, f"must be one of {', '.join(map(str, schema['enum']))}")
        if isinstance(value, dict):
            self._object(value, schema, at)
        elif isinstance(value, list):
            self._array(value, schema, at)
        elif isinstance(value, str):
            _string(value, schema, at)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            _number(value, schema, at)

    def _object(self, value: dict[str, Any], schema: dict[str, Any], at: str) -> None:
        if len(value) > schema.get("maxProperties", math.inf):
            raise Invalid(at, f"at most {schema['maxProperties']} entries")
        for name in schema.get("required", ()):
            if name not in value:
                raise Invalid(_join(at, name), "required")
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        names = schema.get("propertyNames")
        for key, item in value.items():
            where = _join(at, key)
            if names is not None:
                _string(key, names, where)
            if key in properties:
                self.check(item, properties[key], where)
            elif extra is False:
                raise Invalid(where, "unknown field")
            elif isinstance(extra, dict):
                self.check(item, extra, where)

    def _array(self, value: list[Any], schema: dict[str, Any], at: str) -> None:
        if len(value) > schema.get("maxItems", math.inf):
            raise Invalid(at, f"at most {schema['maxItems']} items")
        items = schema.get("items")
        if items is not None:
            for i, item in enumerate(value):
                self.check(item, items, f"{at}[{i}]")


def _check_type(value: Any, kinds: list[str], at: str) -> None:
    for kind in kinds:
        if isinstance(value, TYPES[kind]) and not (
            isinstance(value, bool) and kind in ("integer", "number")
        ):
            if kind == "number" and isinstance(value, float) and not math.isfinite(value):
                continue
            return
    raise Invalid(at, f"must be {' or '.join(kinds)}, not {_kind(value)}")


def _string(value: str, schema: dict[str, Any], at: str) -> None:
    if len(value) > schema.get("maxLength", math.inf):
        raise Invalid(at, f"at most {schema['maxLength']} characters")
    if len(value) < schema.get("minLength", 0):
        raise Invalid(at, f"at least {schema['minLength']} characters")
    pattern = schema.get("pattern")
    if pattern is not None and not _pattern(pattern).search(value):
        raise Invalid(at, f"must match {pattern}")


def _number(value: float, schema: dict[str, Any], at: str) -> None:
    if value < schema.get("minimum", -math.inf):
        raise Invalid(at, f"must be at least {schema['minimum']}")
    if value > schema.get("maximum", math.inf):
        raise Invalid(at, f"must be at most {schema['maximum']}")


def _join(at: str, name: str) -> str:
    return f"{at}.{name}" if at else str(name)[:64]


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else "a number"
    )


def nul_at(value: object, where: str = "") -> str | None:
    """The path (`a.b[2]`) of the first string in `value` that holds a NUL character, keys
    included, or None: PostgreSQL can neither store nor compare one, so the API and the
    site link refuse them on either database. `value` is decoded JSON or a decoded
    site-link message (dataclasses, tuples)."""
    if isinstance(value, str):
        return where if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{where}.{key}" if where else str(key)
            found = inner if isinstance(key, str) and "\x00" in key else nul_at(item, inner)
            if found is not None:
                return found
    elif isinstance(value, list | tuple | set | frozenset):
        for n, item in enumerate(value):
            found = nul_at(item, f"{where}[{n}]")
            if found is not None:
                return found
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            found = nul_at(getattr(value, f.name), f"{where}.{f.name}" if where else f.name)
            if found is not None:
                return found
    return None
