"""Where a CondConv network routes: each block's routers, the CondConvs they route and its
BNs, found in the model (`BlockProbe`), for the routing diagnostics and the router rates."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from condnet.models.blocks import BLOCKS
from condnet.models.condconv import CondConv2d, Routing


@dataclass
class BlockProbe:
    """One block's routers, the CondConvs they route (with each one's router) and its BNs."""

    name: str
    routers: list[Routing]
    convs: list[tuple[CondConv2d, int]]  # (layer, index of its router in `routers`)
    norms: list[nn.BatchNorm2d]
    outputs: dict[int, Tensor] = field(default_factory=dict)  # router index -> last output

    def weights(self) -> Tensor:
        """The last forward's routing weights, (batch, routers * experts)."""
        return torch.cat([self.outputs[i] for i in range(len(self.routers))], dim=1)


def blocks_with_routing(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The registered blocks of `model` that hold routers (else each module owning routers)."""
    kinds = tuple(BLOCKS.values())
    found = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, kinds) and any(isinstance(c, Routing) for c in m.modules())
    ]
    if not found:  # a model of the user's own: each module owning routers directly
        found = [
            (n, m)
            for n, m in model.named_modules()
            if any(isinstance(c, Routing) for c in m.children())
        ]
    return found


def probe(name: str, block: nn.Module) -> BlockProbe:
    routers = [m for m in block.modules() if isinstance(m, Routing)]
    shared = getattr(block, "routing", None)
    convs = []
    for layer in (m for m in block.modules() if isinstance(m, CondConv2d)):
        router = layer.router if layer.router is not None else shared
        convs.append((layer, routers.index(router)))
    norms = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
    return BlockProbe(name, routers, convs, norms)


def routed_experts(model: nn.Module) -> list[tuple[Routing, list[Tensor]]]:
    """Every router of `model` with the expert weights of the CondConvs it routes."""
    pairs = []
    for name, block in blocks_with_routing(model):
        found = probe(name, block)
        for i, router in enumerate(found.routers):
            pairs.append((router, [conv.weight for conv, j in found.convs if j == i]))
    return pairs


def has_routing(model: nn.Module) -> bool:
    return any(isinstance(m, Routing) for m in model.modules())
