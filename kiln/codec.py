"""Dataclasses <-> JSON-able values, driven by type hints.

Plans, kernel specs and op attributes travel between services as JSON in
Celery messages; one generic codec keeps every type's encoding in one place.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from typing import Any, Union

from kiln.ir import IntVar


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def to_json(value: Any) -> Any:
    if isinstance(value, IntVar):
        return {"sym": value.name, "min": value.min, "max": value.max}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in sorted(value.items())}
    if isinstance(value, bytes):
        raise TypeError("bytes do not travel as JSON; store them by digest")
    return value


def from_json(tp: Any, data: Any) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return data
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if data is None and type(None) in args:
            return None
        if isinstance(data, dict) and "sym" in data and IntVar in args:
            return IntVar(data["sym"], data["min"], data["max"])
        for arg in args:
            if arg is type(None):
                continue
            try:
                return from_json(arg, data)
            except (TypeError, ValueError, KeyError):
                continue
        raise ValueError(f"{data!r} matches none of {tp}")
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_json(args[0], v) for v in data)
        return tuple(from_json(a, v) for a, v in zip(args, data, strict=True))
    if origin is list:
        return [from_json(typing.get_args(tp)[0], v) for v in data]
    if origin is dict:
        kt, vt = typing.get_args(tp)
        return {from_json(kt, k): from_json(vt, v) for k, v in data.items()}
    if tp is IntVar:
        return IntVar(data["sym"], data["min"], data["max"])
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(data)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise TypeError(f"{tp.__name__} expects an object, got {data!r}")
        hints = _hints(tp)
        return tp(**{f.name: from_json(hints[f.name], data[f.name]) for f in dataclasses.fields(tp) if f.name in data})
    if tp is float and isinstance(data, (int, float)) and not isinstance(data, bool):
        return float(data)
    if tp in (int, str, bool) and type(data) is tp:
        return data
    if tp is type(None) and data is None:
        return None
    raise TypeError(f"expected {tp}, got {data!r}")
