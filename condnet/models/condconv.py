"""Conditionally parameterized convolution (CondConv, Yang et al. 2019).

Each example is convolved with its own kernel ``W = sum_m r_m * W_m``, a routing-weighted sum
of `num_experts` expert kernels. `CondConv2d` holds the experts (and optionally its own
router); the convolution itself is one of the pure functions of
`condnet.models.condconv_forms`, all exact, chosen per call by `CondConv2d.choose_form` from
the layer's `formulation`, one of `FORMULATIONS`:

- ``grouped``: always the `grouped` form (a batch of one costs exactly one plain convolution
  plus the kernel mixing; its group count depends on the batch size, so it cannot be exported
  to ONNX with a dynamic batch axis).
- ``batched``: shapes independent of the batch, for export: a 1x1 kernel as `rows` on a
  channels_last map (groups 1, no padding or stride) else `matmul`; a larger kernel (the
  depthwise conv) as the `mixture` of expert outputs.
- ``auto`` (the default): off the CPU, as ``batched`` (a channels_last map stays
  channels_last, and a compiled network has few graphs). On the CPU the fastest in eager
  PyTorch, measured per layer kind in `benchmarks/RESULTS.md`: a 1x1 conv as ``batched``, or
  `stacked` where the output has at most `STACKED_MAX_PIXELS` pixels (groups 1, batch > 1); a
  depthwise conv on a batch of channels_last float32 maps as `native` (the compiled kernel),
  else `grouped`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from condnet.choices import FORMULATIONS
from condnet.errors import CondnetError
from condnet.models import condconv_forms as forms
from condnet.models.pooling import spatial_mean

# `auto` mixes kernels only where the output has more pixels than this (else it scales inputs).
STACKED_MAX_PIXELS = 16


ROUTING_ACTIVATIONS = ("sigmoid", "softmax")


class Routing(nn.Module):
    """Routing weights ``r = activation(Linear(global_avg_pool(x)) / temperature)``, one per
    expert and example.

    `activation` is ``sigmoid`` (the paper: each weight in (0, 1) on its own) or ``softmax``
    (the weights sum to one, as in Dynamic Convolution). `temperature` is a buffer, 1 unless a
    training schedule anneals it (a high temperature makes every routing weight nearly equal);
    it is saved with the weights, so a checkpoint computes what it computed in training.
    """

    complexity_kind = "routing"

    def __init__(self, in_channels: int, num_experts: int, activation: str = "sigmoid") -> None:
        super().__init__()
        if activation not in ROUTING_ACTIVATIONS:
            raise CondnetError(
                f"Routing: activation must be one of {', '.join(ROUTING_ACTIVATIONS)}; "
                f"got {activation!r}"
            )
        self.activation = activation
        self.fc = nn.Linear(in_channels, num_experts)
        self.register_buffer("temperature", torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        logits = self.fc(spatial_mean(x)) / self.temperature
        return (
            torch.sigmoid(logits) if self.activation == "sigmoid" else torch.softmax(logits, dim=1)
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Files written before routers had a temperature hold none: theirs was 1.
        state_dict.setdefault(prefix + "temperature", torch.ones(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"activation={self.activation}"


class CondConv2d(nn.Module):
    """A conv whose kernel is mixed per example from `num_experts` experts.

    `forward(x, routing_weights)` takes routing weights of shape (batch, num_experts) from a
    shared router; with `router` set (``sigmoid`` or ``softmax``, its activation) the layer
    has a router of its own and computes them from its input when none are given. Kernel size,
    stride, padding and groups behave as in `nn.Conv2d`. `bias` is None (BN follows every conv
    here); BN folding (`condnet.deploy.fuse`) sets it to a per-output-channel bias added after
    the mixed convolution. `formulation` (an attribute, default ``auto``) picks how the mixed
    kernels are applied (see `FORMULATIONS`); the results agree within float32 rounding.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        *,
        num_experts: int = 4,
        router: str | None = None,
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
        self.register_parameter("bias", None)
        self.router = Routing(in_channels, num_experts, router) if router else None
        self.formulation = "auto"
        self.reset_parameters()

    @property
    def formulation(self) -> str:
        """How the mixed kernels are applied: one of `FORMULATIONS`."""
        return self._formulation

    @formulation.setter
    def formulation(self, value: str) -> None:
        if value not in FORMULATIONS:
            raise CondnetError(
                f"CondConv2d: formulation must be one of {', '.join(FORMULATIONS)}; got {value!r}"
            )
        self._formulation = value

    def reset_parameters(self) -> None:
        """Initialise every expert independently, as `nn.Conv2d` initialises its weight."""
        with torch.no_grad():
            for expert in self.weight:
                nn.init.kaiming_uniform_(expert, a=math.sqrt(5))

    def forward(self, x: Tensor, routing_weights: Tensor | None = None) -> Tensor:
        if routing_weights is None:
            if self.router is None:
                raise CondnetError("CondConv2d without own routing needs routing_weights")
            routing_weights = self.router(x)
        expected = (x.shape[0], self.num_experts)
        if not torch.jit.is_tracing() and routing_weights.shape != expected:
            raise CondnetError(
                f"CondConv2d: routing_weights must have shape {expected}, "
                f"got {tuple(routing_weights.shape)}"
            )
        form = forms.FORMS[self.choose_form(x)]
        return form(
            x, self.weight, routing_weights, self.bias, self.stride, self.padding, self.groups
        )

    def choose_form(self, x: Tensor, device_type: str | None = None) -> str:
        """The name of the form in `condnet.models.condconv_forms.FORMS` this layer runs on
        `x`, by its `formulation`, on `device_type` (default: `x`'s device)."""
        if self.formulation == "grouped":
            return "grouped"
        if self.formulation == "auto" and (device_type or x.device.type) == "cpu":
            return self._cpu_form(x)
        return "mixture" if self.kernel_size != (1, 1) else self._pointwise_form(x)

    def _cpu_form(self, x: Tensor) -> str:
        """`auto` on the CPU: the fastest form per layer kind in eager PyTorch (measured)."""
        if self.kernel_size != (1, 1):
            return "native" if forms.applies("native", self.weight, self.groups, x) else "grouped"
        (pad_h, pad_w), (stride_h, stride_w) = self.padding, self.stride
        pixels = -(-(x.shape[2] + 2 * pad_h) // stride_h) * -(-(x.shape[3] + 2 * pad_w) // stride_w)
        if pixels <= STACKED_MAX_PIXELS and self.groups == 1 and x.shape[0] > 1:
            return "stacked"
        return self._pointwise_form(x)

    def _pointwise_form(self, x: Tensor) -> str:
        """A 1x1 kernel without stacking: `rows` where the map is a matrix per example as it is
        (channels_last, groups 1, no padding or stride), else `matmul`."""
        plain = self.groups == 1 and self.stride == (1, 1) and self.padding == (0, 0)
        return "rows" if plain and x.is_contiguous(memory_format=torch.channels_last) else "matmul"

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, groups={self.groups}, "
            f"num_experts={self.num_experts}, bias={self.bias is not None}, "
            f"formulation={self.formulation}"
        )


def set_formulation(module: nn.Module, formulation: str) -> nn.Module:
    """Switch every `CondConv2d` inside `module` to `formulation`, in place; returns `module`."""
    for layer in module.modules():
        if isinstance(layer, CondConv2d):
            layer.formulation = formulation
    return module
