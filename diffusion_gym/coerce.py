"""Settings given as text (a command line's `--train num_envs 8`, `--reward-kwargs batch_size 4`)
turned into the types their dataclass field or function parameter declares, or refused with a
message that names the setting, the value and the type it needs.

    coerce("8", int, "num_envs")                    # 8
    coerce("None", float | None, "max_minutes")     # None
    coerce("600,999", tuple[int, int], "interval")  # (600, 999)

A value that is not a string is checked against the type, not converted (an int is accepted
where a float is wanted).
"""

from __future__ import annotations

import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")
_NONE = ("none", "null")


def coerce(value: Any, hint: Any, name: str) -> Any:
    """`value` as the type `hint` describes; ValueError naming `name` if it cannot be.

    Handles the hints settings use: bool, int, float, str, Path, Literal, Optional/unions,
    tuples (text separated by commas or spaces) and dicts (given as dicts).
    """
    try:
        return _coerce(value, hint)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be {_describe(hint)}, got {value!r}{f' ({error})' if str(error) else ''}.") from None


def _coerce(value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value.strip().lower() in _NONE)):
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg)
            except (TypeError, ValueError):
                continue
        raise ValueError("")
    if origin is Literal:
        if not isinstance(value, bool) and value in args:  # (True == 1: a bool is not the literal 1)
            return value
        for arg in args:  # "3" for Literal[3]
            if isinstance(value, str) and not isinstance(arg, str) and str(arg) == value:
                return arg
        raise ValueError("")
    if origin is tuple:
        items = value if isinstance(value, (tuple, list)) else [v for v in str(value).replace(",", " ").split() if v]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in items)
        if len(items) != len(args):
            raise ValueError("")
        return tuple(_coerce(v, a) for v, a in zip(items, args))
    if origin is dict:
        if isinstance(value, dict):
            return {_coerce(k, args[0]): _coerce(v, args[1]) for k, v in value.items()} if args else dict(value)
        raise TypeError("")
    if hint is type(None):
        if value is None:
            return None
        raise ValueError("")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError("")
    if hint is int:
        if isinstance(value, str):
            return int(value.strip())
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError("")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise TypeError("")
        number = float(value.strip() if isinstance(value, str) else value)
        if not math.isfinite(number):
            raise ValueError("not finite")
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        raise TypeError("")
    if hint is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise TypeError("")
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise TypeError(f"cannot convert to {hint}")


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"values of type {_describe(args[0])} (comma-separated)"
        return f"{len(args)} comma-separated values ({', '.join(_describe(a) for a in args)})"
    if hint is type(None):
        return "None"
    return {bool: "true or false", int: "an int", float: "a finite number", str: "a string", Path: "a path"}.get(hint, getattr(hint, "__name__", str(hint)))
