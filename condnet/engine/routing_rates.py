"""Router learning rates derived from the measured gradient scale (`train.routing_lr_auto`).

A router's logit moves every weight of the three convolutions it routes, so its gradient is a
sum over whole kernels: at the first step its gradient is tens to hundreds of times larger,
relative to its weights, than its experts' (measured in the README's section on training block
C). Calibration measures both ratios on the first batch and scales each router's rate so that
its relative update matches its experts'; the scales are kept in the optimizer's groups, so a
resumed run uses the same ones.
"""

from __future__ import annotations

import torch
from torch import nn

from condnet.engine.diagnostics import grad_to_weight, routed_experts


def needs_calibration(optimizer: torch.optim.Optimizer) -> bool:
    return any(g.get("routing") and not g.get("calibrated") for g in optimizer.param_groups)


@torch.no_grad()
def calibrate_router_rates(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[float]:
    """After a backward pass: multiply each router group's `lr_scale` by
    ``(expert grad / weight) / (router grad / weight)``; returns the factors."""
    groups = {id(p): g for g in optimizer.param_groups if g.get("routing") for p in g["params"]}
    factors = []
    for router, experts in routed_experts(model):
        group = groups[id(router.fc.weight)]
        ratio = grad_to_weight(experts) / grad_to_weight(list(router.parameters())).clamp_min(1e-30)
        factor = float(ratio.clamp(1e-4, 1.0))  # never faster than the other layers
        group["lr_scale"] *= factor
        group["lr"] *= factor  # this step's rate too
        group["calibration"], group["calibrated"] = factor, True
        factors.append(factor)
    return factors
