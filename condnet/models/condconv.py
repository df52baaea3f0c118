"""Conditionally parameterized convolution (CondConv, Yang et al. 2019).

Each example is convolved with its own kernel ``W = sum_m r_m * W_m``, a routing-weighted sum
of `num_experts` expert kernels. The mixed kernels are applied in one grouped convolution with
the batch folded into the channels, so a batch of one costs exactly one plain convolution plus
the kernel mixing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from condnet.errors import CondnetError


class Routing(nn.Module):
    """Routing weights ``r = sigmoid(Linear(global_avg_pool(x)))``, one per expert and example."""

    complexity_kind = "routing"

    def __init__(self, in_channels: int, num_experts: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, num_experts)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.fc(x.mean((2, 3))))


class CondConv2d(nn.Module):
    """A conv whose kernel is mixed per example from `num_experts` experts.

    `forward(x, routing_weights)` takes routing weights of shape (batch, num_experts) from a
    shared router; with `own_routing=True` the layer computes them from its own input when none
    are given. Kernel size, stride, padding and groups behave as in `nn.Conv2d` (no bias: BN
    follows every conv here).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        num_experts: int = 4,
        own_routing: bool = False,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise CondnetError(
                f"CondConv2d: groups={groups} must divide in_channels={in_channels} "
                f"and out_channels={out_channels}"
            )
        if num_experts < 1:
            raise CondnetError(f"CondConv2d: num_experts must be >= 1, got {num_experts}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = (kernel_size, kernel_size)
        self.stride = (stride, stride)
        self.padding = (kernel_size // 2,) * 2 if padding is None else (padding, padding)
        self.groups = groups
        self.num_experts = num_experts
        self.expert_shape = (out_channels, in_channels // groups, kernel_size, kernel_size)
        self.weight = nn.Parameter(torch.empty(num_experts, *self.expert_shape))
        self.router = Routing(in_channels, num_experts) if own_routing else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise every expert independently, as `nn.Conv2d` initialises its weight."""
        with torch.no_grad():
            for expert in self.weight:
                nn.init.kaiming_uniform_(expert, a=math.sqrt(5))

    def mixed_weight(self, routing_weights: Tensor) -> Tensor:
        """Per-example kernels, shape (batch * out_channels, in_channels / groups, k, k)."""
        mixed = routing_weights @ self.weight.reshape(self.num_experts, -1)
        return mixed.reshape(-1, *self.expert_shape[1:])

    def forward(self, x: Tensor, routing_weights: Tensor | None = None) -> Tensor:
        if routing_weights is None:
            if self.router is None:
                raise CondnetError("CondConv2d without own routing needs routing_weights")
            routing_weights = self.router(x)
        batch, channels, height, width = x.shape
        if routing_weights.shape != (batch, self.num_experts):
            raise CondnetError(
                f"CondConv2d: routing_weights must have shape ({batch}, {self.num_experts}), "
                f"got {tuple(routing_weights.shape)}"
            )
        out = F.conv2d(
            x.reshape(1, batch * channels, height, width),
            self.mixed_weight(routing_weights),
            None,
            self.stride,
            self.padding,
            groups=self.groups * batch,
        )
        return out.reshape(batch, self.out_channels, out.shape[-2], out.shape[-1])

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, groups={self.groups}, "
            f"num_experts={self.num_experts}"
        )
