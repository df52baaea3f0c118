"""Statistics of routing weights, mixed kernels and gradients, computed on the device (the
routing diagnostics' figures; `condnet.engine.diagnostics` says what each means)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from condnet.models.condconv import CondConv2d

LOW, HIGH = 0.05, 0.95


def routing_figures(weights: Tensor, num_experts: int) -> Tensor:
    """[mean, low, high, entropy] of routing weights (batch, routers * experts), on the device."""
    return example_figures(weights, num_experts).mean(0)


def example_figures(weights: Tensor, num_experts: int) -> Tensor:
    """`routing_figures` of each example: (batch, 4), on the device."""
    grouped = weights.float().reshape(weights.shape[0], -1, num_experts)
    share = grouped / grouped.sum(-1, keepdim=True).clamp_min(1e-12)
    entropy = (
        -(share * share.clamp_min(1e-12).log()).sum(-1) / math.log(num_experts)
        if num_experts > 1
        else share[..., 0] * 0 + 1
    )
    return torch.stack(
        [
            grouped.mean((1, 2)),
            (grouped < LOW).float().mean((1, 2)),
            (grouped > HIGH).float().mean((1, 2)),
            entropy.mean(1),
        ],
        dim=1,
    )


def mixed_kernel_norms(layer: CondConv2d, weights: Tensor) -> Tensor:
    """Per example, ``||sum_m r_m W_m|| / sqrt(mean_m ||W_m||^2)``, from the experts' Gram
    matrix."""
    experts = layer.weight.detach().float().reshape(layer.num_experts, -1)
    gram = experts @ experts.T
    squared = torch.einsum("nm,mk,nk->n", weights.float(), gram, weights.float())
    return (squared.clamp_min(0) / gram.diagonal().mean().clamp_min(1e-30)).sqrt()


def grad_to_weight(params: list[Tensor]) -> Tensor:
    """||gradient|| / ||weight|| over `params` (0 when none has a gradient yet)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    grad = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
    )
    weight = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(p.detach().float()) for p in params])
    )
    return grad / weight.clamp_min(1e-30)
