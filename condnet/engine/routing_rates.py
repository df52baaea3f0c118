"""How fast CondConv routers learn, from their measured gradient scale.

A router's logit moves every weight of the convolutions it routes, so its gradient is a sum
over whole kernels: relative to its weights it is tens to hundreds of times larger than its
experts' (docs/training-block-c.md), and the gap widens as the experts' weights grow during
training. The default remedy is a fixed rate multiplier (`train.routing_lr_scale`, applied by
the optimizer's groups); two adaptive ones live here, each measured in that document:

- `train.routing_grad_clip` (every step): each router's gradient is scaled down, where needed,
  so that its gradient-to-weight ratio is at most this multiple of its experts' ratio. Tensor
  operations only: no host sync. With a small router it binds at every step and removes
  nearly all of the gradient, which freezes the routers in effect.
- `train.routing_lr_auto` (once): at the first step, each router's rate is scaled so that its
  relative update matches its experts'; the factor is kept in the optimizer's group, so a
  resumed run uses the same one.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from condnet.config import TrainConfig
from condnet.engine.routing_probes import routed_experts
from condnet.engine.routing_stats import grad_to_weight
from condnet.models.condconv import Routing


class RouterRates:
    """Applies the two settings above after each backward pass of `model`."""

    def __init__(self, model: nn.Module, cfg: TrainConfig) -> None:
        routed = routed_experts(model)
        self.routers = [router for router, _ in routed]
        self.pairs = [(list(r.parameters()), experts) for r, experts in routed]
        self.clip, self.auto = cfg.routing_grad_clip, cfg.routing_lr_auto

    @classmethod
    def wanted(cls, model: nn.Module, cfg: TrainConfig) -> RouterRates | None:
        if cfg.routing_grad_clip <= 0 and not cfg.routing_lr_auto:
            return None
        rates = cls(model, cfg)
        return rates if rates.pairs else None

    @torch.no_grad()
    def after_backward(self, optimizer: torch.optim.Optimizer) -> dict[Routing, Tensor]:
        """Calibrate (once) and cap; returns each router's cap factor (1: untouched), a
        device tensor (no host sync), empty when no cap is set."""
        if self.auto and needs_calibration(optimizer):
            calibrate(self.pairs, optimizer)
        if self.clip <= 0:
            return {}
        return {
            module: clip_relative(router, experts, self.clip)
            for module, (router, experts) in zip(self.routers, self.pairs, strict=True)
        }


def clip_relative(router: list[Tensor], experts: list[Tensor], limit: float) -> Tensor:
    """Scale the router's gradients so that their ratio to its weights is at most `limit`
    times the experts' ratio (unchanged when already below); returns the factor applied."""
    allowed = limit * grad_to_weight(experts)
    factor = (allowed / grad_to_weight(router).clamp_min(1e-30)).clamp(max=1.0)
    for param in router:
        if param.grad is not None:
            param.grad.mul_(factor.to(param.grad.dtype))
    return factor


def needs_calibration(optimizer: torch.optim.Optimizer) -> bool:
    return any(g.get("routing") and not g.get("calibrated") for g in optimizer.param_groups)


def calibrate(
    pairs: list[tuple[list[Tensor], list[Tensor]]], optimizer: torch.optim.Optimizer
) -> list[float]:
    """Multiply each router group's `lr_scale` by ``(expert grad / weight) / (router grad /
    weight)`` (at most 1); returns the factors."""
    groups = {id(p): g for g in optimizer.param_groups if g.get("routing") for p in g["params"]}
    factors = []
    for router, experts in pairs:
        group = groups[id(router[0])]
        ratio = grad_to_weight(experts) / grad_to_weight(router).clamp_min(1e-30)
        factor = float(ratio.clamp(1e-4, 1.0))  # never faster than the other layers
        group["lr_scale"] *= factor
        group["lr"] *= factor  # this step's rate too
        group["calibration"], group["calibrated"] = factor, True
        factors.append(factor)
    return factors
