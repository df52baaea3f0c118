"""Networks: spec (data), blocks, CondConv, builder and presets."""

from condnet.models.blocks import BLOCKS, CondConvBlock, SEBlock, StandardBlock, get_block
from condnet.models.condconv import CondConv2d, Routing
from condnet.models.net import CondNet
from condnet.models.presets import PRESETS, build_model, get_spec, list_models
from condnet.models.spec import HeadSpec, NetSpec, StageSpec, StemSpec, with_overrides

__all__ = [
    "BLOCKS",
    "CondConv2d",
    "CondConvBlock",
    "CondNet",
    "HeadSpec",
    "NetSpec",
    "PRESETS",
    "Routing",
    "SEBlock",
    "StageSpec",
    "StandardBlock",
    "StemSpec",
    "build_model",
    "get_block",
    "get_spec",
    "list_models",
    "with_overrides",
]
