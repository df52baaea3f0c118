"""Named presets (the paper's three networks) and the public `build_model` / `list_models`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from condnet.errors import CondnetError
from condnet.models.net import CondNet
from condnet.models.spec import NetSpec, StageSpec, unused_overrides, with_overrides
from condnet.paper import NETWORKS, TABLE1_STAGES


def paper_spec(block: str) -> NetSpec:
    """The paper's network with every stage built from `block`."""
    stages = tuple(StageSpec(c, r, s, block=block) for c, r, s in TABLE1_STAGES)
    return NetSpec(stages=stages)


# In the order of the paper's tables (blocks A, B, C).
PRESETS: dict[str, NetSpec] = {name: paper_spec(block) for name, block in NETWORKS.items()}


def list_models(paper_order: bool = False) -> list[str]:
    """Names accepted by `build_model`, sorted; `paper_order`: in the order of the paper's
    tables (blocks A, B, C), as the report and the benchmarks list them."""
    return list(PRESETS) if paper_order else sorted(PRESETS)


def get_spec(name: str, **overrides: Any) -> NetSpec:
    """The preset `name` with `overrides` applied (see `condnet.models.spec.OVERRIDE_KEYS`)."""
    if name not in PRESETS:
        raise CondnetError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return with_overrides(PRESETS[name], **overrides)


def drop_unused_overrides(name: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`overrides` shared by several presets, less the per-stage keys that no block of preset
    `name` uses (`num_experts` reaches paper-condconv alone); unchanged where the block layout
    they give is invalid (building the model then says why)."""
    layout = {key: overrides[key] for key in ("block", "stages") if key in overrides}
    try:
        unused = unused_overrides(get_spec(name, **layout), overrides)
    except CondnetError:
        return dict(overrides)
    return {key: value for key, value in overrides.items() if key not in unused}


def build_model(name: str, num_classes: int = 100, **overrides: Any) -> CondNet:
    """Build the preset `name` (e.g. ``"paper-se"``), optionally with overrides.

    >>> model = build_model("paper-condconv", num_classes=10, num_experts=8)
    """
    return CondNet(get_spec(name, num_classes=num_classes, **overrides))
