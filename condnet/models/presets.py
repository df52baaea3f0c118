"""Named presets (the paper's three networks) and the public `build_model` / `list_models`."""

from __future__ import annotations

from typing import Any

from condnet.errors import CondnetError
from condnet.models.net import CondNet
from condnet.models.spec import NetSpec, StageSpec, with_overrides

# Paper Table 1 as (output channels, repeats, stride of the first block) per stage.
PAPER_STAGES = ((16, 1, 1), (24, 2, 1), (40, 3, 2), (80, 4, 2), (160, 5, 2), (320, 1, 1))


def paper_spec(block: str) -> NetSpec:
    """The paper's network with every stage built from `block`."""
    stages = tuple(StageSpec(c, r, s, block=block) for c, r, s in PAPER_STAGES)
    return NetSpec(stages=stages)


PRESETS: dict[str, NetSpec] = {
    "paper-standard": paper_spec("standard"),
    "paper-se": paper_spec("se"),
    "paper-condconv": paper_spec("condconv"),
}


def list_models() -> list[str]:
    """Names accepted by `build_model`."""
    return sorted(PRESETS)


def get_spec(name: str, **overrides: Any) -> NetSpec:
    """The preset `name` with `overrides` applied (see `condnet.models.spec.OVERRIDE_KEYS`)."""
    if name not in PRESETS:
        raise CondnetError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return with_overrides(PRESETS[name], **overrides)


def build_model(name: str, num_classes: int = 100, **overrides: Any) -> CondNet:
    """Build the preset `name` (e.g. ``"paper-se"``), optionally with overrides.

    >>> model = build_model("paper-condconv", num_classes=10, num_experts=8)
    """
    return CondNet(get_spec(name, num_classes=num_classes, **overrides))
