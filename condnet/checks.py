"""Checking a setting: its type and its allowed values, with one line naming the setting and
what is allowed when it is wrong. The config (`condnet.config`) and the network specs
(`condnet.models.spec`) both check with it."""

from __future__ import annotations

import difflib
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from condnet.errors import CondnetError

MODEL_OVERRIDES = "model.overrides."  # dotted keys below it name a model override each


def check_value(key: str, value: Any, hint: Any, rules: Mapping[str, Any]) -> Any:
    """`value` coerced to type `hint` (bool, int, float, str, list of numbers, dict, or one of
    them or None), or one line naming `key` and what is allowed. `rules`: ``choices``, ``min``,
    ``max``, ``gt`` (for each number, a list's included) and a list's ``length``."""
    types = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    if value is None:
        if type(None) in typing.get_args(hint):
            return None
        raise CondnetError(f"{key}: a value is required ({describe(types[0], rules)})")
    kind = types[0]
    ok = (
        (kind is bool and isinstance(value, bool))
        or (kind is int and isinstance(value, int) and not isinstance(value, bool))
        or (kind is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (kind is str and isinstance(value, str))
        or (kind is list and isinstance(value, list) and all(is_number(v) for v in value))
        or (kind is dict and isinstance(value, dict))
    )
    if not ok:
        raise CondnetError(f"{key}: expected {describe(kind, rules)}, got {value!r}")
    value = float(value) if kind is float else value
    values = [float(v) for v in value] if kind is list else [value]
    if kind is list and "length" in rules and len(values) != rules["length"]:
        raise CondnetError(f"{key}: expected {describe(kind, rules)}, got {value!r}")
    if "choices" in rules and value not in rules["choices"]:
        raise CondnetError(f"{key}: expected one of {', '.join(rules['choices'])}; got {value!r}")
    for v in values if kind in (int, float, list) else []:
        bad = ("min" in rules and v < rules["min"]) or ("max" in rules and v > rules["max"])
        if bad or ("gt" in rules and v <= rules["gt"]):
            raise CondnetError(f"{key}: expected {describe(kind, rules)}, got {value!r}")
    return values if kind is list else value


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def describe(kind: type, rules: Mapping[str, Any]) -> str:
    name = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        dict: "a mapping",
        list: f"a list of {rules.get('length', 'some')} numbers",
    }[kind]
    bounds = [
        f">= {rules['min']}" if "min" in rules else "",
        f"> {rules['gt']}" if "gt" in rules else "",
        f"<= {rules['max']}" if "max" in rules else "",
    ]
    bounds = [b for b in bounds if b]
    return name + (f" ({' and '.join(bounds)})" if bounds else "")


def did_you_mean(key: str, allowed: Iterable[str], prefix: str = "") -> str:
    """``"did you mean 'PREFIX.CLOSEST'? "`` for the allowed name closest to `key`, or ""."""
    close = difflib.get_close_matches(key, list(allowed), n=1)
    return f"did you mean '{prefix}{close[0]}'? " if close else ""
