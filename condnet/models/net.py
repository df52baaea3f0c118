"""The network builder: turns a `NetSpec` into modules (stem, stages of blocks, head and
classifier)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from condnet.models.blocks import ConvNormAct, LayerFactory, get_block
from condnet.models.condconv import CondConv2d, Routing
from condnet.models.spec import NetSpec, StageSpec


class CondNet(nn.Module):
    """EfficientNet-style classifier described by a `NetSpec` (paper Table 1 by default).

    `forward_features` returns the head conv's feature map (N x head.channels x H x W);
    `forward_head` pools it and applies the classifier.
    """

    def __init__(
        self,
        spec: NetSpec,
        act_layer: LayerFactory = nn.ReLU,
        norm_layer: LayerFactory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.spec = spec
        layer = dict(act_layer=act_layer, norm_layer=norm_layer)
        self.stem = ConvNormAct(
            spec.in_channels, spec.stem.channels, spec.stem.kernel_size, spec.stem.stride, **layer
        )
        stages, channels = [], spec.stem.channels
        for stage in spec.stages:
            stages.append(_build_stage(channels, stage, **layer))
            channels = stage.channels
        self.stages = nn.Sequential(*stages)
        self.head = ConvNormAct(channels, spec.head.channels, 1, **layer)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(spec.head.channels, spec.num_classes)
        init_weights(self)

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def forward_features(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.pool(x).flatten(1)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _build_stage(in_channels: int, stage: StageSpec, **layer: LayerFactory) -> nn.Sequential:
    """The stage's blocks; the stage spec is their options (`BlockOptions`)."""
    block = get_block(stage.block)
    blocks = [block(in_channels, stage.channels, stage.stride, stage, **layer)]
    blocks += [
        block(stage.channels, stage.channels, 1, stage, **layer) for _ in range(stage.repeats - 1)
    ]
    return nn.Sequential(*blocks)


@torch.no_grad()
def init_weights(model: nn.Module) -> None:
    """He-normal (fan-out) convs and experts, unit BN, small-normal linears with zero bias."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, CondConv2d):
            for expert in module.weight:
                nn.init.kaiming_normal_(expert, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            nn.init.zeros_(module.bias)


ROUTER_INITS = ("small", "reference")


@torch.no_grad()
def init_routers(model: nn.Module, scheme: str) -> None:
    """(Re)initialise every CondConv router's linear layer, bias zero, weight:

    - ``small``: N(0, 0.01), as every linear layer of `init_weights`;
    - ``reference``: uniform in +-1 / sqrt(in_features + num_experts), the initialisation of
      the CondConv reference code (TF's EfficientNet-CondConv and timm's `_init_weight_goog`),
      4.5-13x larger in norm at this network's widths.
    """
    if scheme not in ROUTER_INITS:
        raise ValueError(f"router init must be one of {ROUTER_INITS}; got {scheme!r}")
    for module in model.modules():
        if isinstance(module, Routing):
            fc = module.fc
            if scheme == "small":
                nn.init.normal_(fc.weight, 0.0, 0.01)
            else:
                bound = 1.0 / (fc.in_features + fc.out_features) ** 0.5
                nn.init.uniform_(fc.weight, -bound, bound)
            nn.init.zeros_(fc.bias)


EXPERT_INITS = ("independent", "shared")


@torch.no_grad()
def init_experts(model: nn.Module, scheme: str) -> None:
    """(Re)initialise every CondConv's experts: ``independent`` draws each as a plain conv
    (He-normal, fan-out), as `init_weights` does; ``shared`` draws one such kernel per layer
    and copies it into every expert, so the mixed kernel starts as a plain conv scaled by the
    routing weights' sum, and the experts part only as their routing weights differ."""
    if scheme not in EXPERT_INITS:
        raise ValueError(f"expert init must be one of {EXPERT_INITS}; got {scheme!r}")
    for module in model.modules():
        if isinstance(module, CondConv2d):
            for expert in module.weight[: 1 if scheme == "shared" else None]:
                nn.init.kaiming_normal_(expert, mode="fan_out", nonlinearity="relu")
            if scheme == "shared":
                module.weight[1:] = module.weight[:1]
