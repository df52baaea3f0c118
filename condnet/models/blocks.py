"""The three building blocks of the paper (Figure 2), registered by name.

Every block has the same constructor signature, so the builder (and a user extending the
registry) can swap them per stage:

    Block(in_channels, out_channels, stride, opts: BlockOptions, *, act_layer, norm_layer)

`BlockOptions` carries the stage options (expansion, kernel size, SE ratio, experts, routing);
a stage's `condnet.models.spec.StageSpec` is one. Each kind also states which of the stage
options it uses (`options`); the registry answers
for it (`block_uses`), so that a spec can check what a block needs and refuse an override that
no block of the network would use. Expanded width Ne = expansion * in_channels; identity path
exactly when in == out and stride 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from condnet.errors import CondnetError
from condnet.models.condconv import CondConv2d, Routing
from condnet.models.pooling import spatial_mean

LayerFactory = Callable[..., nn.Module]


class ConvNormAct(nn.Sequential):
    """Conv (no bias), BN, optional activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        *,
        groups: int = 1,
        act_layer: LayerFactory | None = nn.ReLU,
        norm_layer: LayerFactory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            kernel_size // 2,
            groups=groups,
            bias=False,
        )
        self.bn = norm_layer(out_channels)
        self.act = act_layer(inplace=True) if act_layer else nn.Identity()


@dataclass(frozen=True, kw_only=True)
class BlockOptions:
    """What a stage sets for its blocks besides widths and stride (each kind uses some of it,
    its `options`); the defaults are the paper's."""

    expansion: int = 4
    kernel_size: int = 3
    se_ratio: int = 4
    num_experts: int = 4
    routing: str = "block"
    routing_activation: str = "sigmoid"


PAPER_OPTIONS = BlockOptions()


class CondConvNormAct(nn.Module):
    """CondConv2d, BN, optional activation; takes the routing weights beside the input. With
    `opts.routing == "conv"` the CondConv has a router of its own."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        *,
        groups: int = 1,
        opts: BlockOptions,
        act_layer: LayerFactory | None = nn.ReLU,
        norm_layer: LayerFactory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        own = opts.routing_activation if opts.routing == "conv" else None
        self.conv = CondConv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            None,
            groups,
            num_experts=opts.num_experts,
            router=own,
        )
        self.bn = norm_layer(out_channels)
        self.act = act_layer(inplace=True) if act_layer else nn.Identity()

    def forward(self, x: Tensor, routing_weights: Tensor | None = None) -> Tensor:
        return self.act(self.bn(self.conv(x, routing_weights)))


class SqueezeExcite(nn.Module):
    """Global average pool, Linear C -> C/R, activation, Linear C/R -> C, sigmoid, rescale."""

    complexity_kind = "se"

    def __init__(self, channels: int, reduced: int, act_layer: LayerFactory = nn.ReLU) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, reduced)
        self.act = act_layer(inplace=True)
        self.fc2 = nn.Linear(reduced, channels)

    def forward(self, x: Tensor) -> Tensor:
        scale = torch.sigmoid(self.fc2(self.act(self.fc1(spatial_mean(x)))))
        return x * scale[:, :, None, None]


class StandardBlock(nn.Module):
    """Block A: 1x1 expand, k x k depthwise (stride), 1x1 project, identity when shapes allow."""

    options = ("expansion", "kernel_size")  # the stage options it uses; it ignores the others

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        opts: BlockOptions = PAPER_OPTIONS,
        *,
        act_layer: LayerFactory = nn.ReLU,
        norm_layer: LayerFactory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        inner = in_channels * opts.expansion
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.has_identity = in_channels == out_channels and stride == 1
        layer = dict(act_layer=act_layer, norm_layer=norm_layer)
        k = opts.kernel_size
        self.expand = ConvNormAct(in_channels, inner, 1, **layer)
        self.depthwise = ConvNormAct(inner, inner, k, stride, groups=inner, **layer)
        self.se = (
            SqueezeExcite(inner, inner // opts.se_ratio, act_layer)
            if "se_ratio" in self.options
            else nn.Identity()
        )
        self.project = ConvNormAct(inner, out_channels, 1, act_layer=None, norm_layer=norm_layer)

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        return out + x if self.has_identity else out


class SEBlock(StandardBlock):
    """Block B: Block A with squeeze-and-excitation on the expanded channels (Figure 3)."""

    options = (*StandardBlock.options, "se_ratio")


class CondConvBlock(nn.Module):
    """Block C: Block B whose three convolutions are CondConvs with `num_experts` experts.

    Routing is computed once per block from its input and shared by the three CondConvs
    (`routing="block"`), or by each CondConv from its own input (`routing="conv"`).
    """

    options = (*SEBlock.options, "num_experts", "routing", "routing_activation")

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        opts: BlockOptions = PAPER_OPTIONS,
        *,
        act_layer: LayerFactory = nn.ReLU,
        norm_layer: LayerFactory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        inner = in_channels * opts.expansion
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.has_identity = in_channels == out_channels and stride == 1
        shared = opts.routing != "conv"
        self.routing = (
            Routing(in_channels, opts.num_experts, opts.routing_activation) if shared else None
        )
        cond = dict(opts=opts, act_layer=act_layer, norm_layer=norm_layer)
        k = opts.kernel_size
        self.expand = CondConvNormAct(in_channels, inner, 1, **cond)
        self.depthwise = CondConvNormAct(inner, inner, k, stride, groups=inner, **cond)
        self.se = SqueezeExcite(inner, inner // opts.se_ratio, act_layer)
        self.project = CondConvNormAct(
            inner, out_channels, 1, opts=opts, act_layer=None, norm_layer=norm_layer
        )

    def forward(self, x: Tensor) -> Tensor:
        weights = self.routing(x) if self.routing is not None else None
        out = self.depthwise(self.expand(x, weights), weights)
        out = self.project(self.se(out), weights)
        return out + x if self.has_identity else out


BLOCKS: dict[str, type[nn.Module]] = {
    "standard": StandardBlock,
    "se": SEBlock,
    "condconv": CondConvBlock,
}


def get_block(name: str) -> type[nn.Module]:
    """The block class registered under `name`."""
    if name not in BLOCKS:
        raise CondnetError(
            f"unknown block {name!r}; registered blocks: {', '.join(sorted(BLOCKS))}"
        )
    return BLOCKS[name]


def block_uses(name: str, option: str) -> bool:
    """Whether the block kind `name` uses the stage option `option` (e.g. ``se_ratio``)."""
    return option in get_block(name).options


def blocks_using(option: str) -> list[str]:
    """The registered kinds that use the stage option `option`, by name."""
    return sorted(name for name in BLOCKS if block_uses(name, option))
