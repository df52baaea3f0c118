"""Helpers shared by subcommands."""

from __future__ import annotations

from typing import Any, Sequence

import yaml

from condnet.errors import CondnetError


def parse_assignments(items: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[1, 2]"]`` -> ``{"a.b": 1, "c": [1, 2]}``; values are read as YAML."""
    result = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise CondnetError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            result[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise CondnetError(f"--set {key}: cannot read value {text!r}") from None
    return result
