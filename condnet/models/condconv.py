"""Conditionally parameterized convolution (CondConv, Yang et al. 2019).

Each example is convolved with its own kernel ``W = sum_m r_m * W_m``, a routing-weighted sum
of `num_experts` expert kernels. A layer's `formulation` is one of the three `FORMULATIONS`;
all compute the same function, within float32 rounding:

- ``grouped``: the mixed kernels are applied in one grouped convolution with the batch folded
  into the channels, so a batch of one costs exactly one plain convolution plus the kernel
  mixing. Its group count depends on the batch size, so it cannot be exported to ONNX with a
  dynamic batch axis.
- ``batched``: a 1x1 conv as one batched matmul of the per-example mixed kernels with the input
  viewed as (batch, in_channels, pixels); a larger kernel (the depthwise conv) as the mixture of
  expert outputs ``sum_m r_m * conv(x, W_m)``, exact because convolution is linear and cheap for
  a depthwise conv. Every shape but the batch is static, so it exports with a dynamic batch axis.
- ``auto`` (the default): on a GPU, ``batched`` everywhere (channels_last kept, shapes
  independent of the batch); on the CPU the fastest in eager PyTorch, measured per layer kind
  in `benchmarks/RESULTS.md`: a 1x1 conv runs ``batched`` (on a channels_last map, as one
  matrix product per example whose output is channels_last too), or ``stacked`` where the
  output has at most `STACKED_MAX_PIXELS` pixels; a depthwise conv on a batch of channels_last
  float32 CPU maps runs the compiled kernel of `condnet.models.native` (``native``), else
  ``grouped``.

``stacked``, which only ``auto`` chooses, computes a 1x1 ungrouped conv as
``[W_1 .. W_M] @ [r_1 x; ..; r_M x]``: one dense conv over the routing-scaled input copies,
which never builds the per-example kernels (their size, batch x weights, dominates when the
feature map is small). ``native``, which only ``auto`` chooses, convolves each example with its
mixed kernel directly on the channels_last map, forward and backward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from condnet.errors import CondnetError
from condnet.models import native
from condnet.models.pooling import spatial_mean

FORMULATIONS = ("auto", "grouped", "batched")
# `auto` mixes kernels only where the output has more pixels than this (else it scales inputs).
STACKED_MAX_PIXELS = 16
# Inference mixes 1x1 kernels for a chunk of the batch at a time, as many examples as fit in
# this many floats (8 MiB, a share of a server CPU's cache), and at least MIN_MIXING_CHUNK.
MIXING_CACHE_FLOATS = 1 << 21
MIN_MIXING_CHUNK = 8


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
    shared router; with `own_routing=True` the layer computes them from its own input when none
    are given. Kernel size, stride, padding and groups behave as in `nn.Conv2d` (no bias: BN
    follows every conv here, and `bias=True` is for BN folded into the layer: a per-output-channel
    bias added after the mixed convolution). `formulation` picks how the mixed kernels are applied
    (see `FORMULATIONS`); the results agree within float32 rounding.
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
        own_routing: bool = False,
        bias: bool = False,
        formulation: str = "auto",
        routing_activation: str = "sigmoid",
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
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_channels))
        else:
            self.register_parameter("bias", None)
        self.router = Routing(in_channels, num_experts, routing_activation) if own_routing else None
        self.formulation = formulation
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

    def mixed_weight(self, routing_weights: Tensor) -> Tensor:
        """Per-example kernels, shape (batch * out_channels, in_channels / groups, k, k)."""
        mixed = routing_weights @ self.weight.reshape(self.num_experts, -1)
        return mixed.reshape(-1, *self.expert_shape[1:])

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
        formulation = self.formulation
        if formulation == "auto":
            formulation = self._auto_formulation(x)
        if formulation == "grouped":
            return self._forward_grouped(x, routing_weights)
        if formulation == "stacked":
            return self._forward_stacked(x, routing_weights)
        if formulation == "native":
            return self._forward_native(x, routing_weights)
        return self._forward_batched(x, routing_weights)

    def _auto_formulation(self, x: Tensor, device_type: str | None = None) -> str:
        """`auto`'s choice for input `x` on `device_type` (default: `x`'s device). Off the CPU
        every layer runs ``batched``: a channels_last map stays channels_last through the 1x1
        products and the depthwise mixture of expert convolutions, and the shapes never
        depend on the batch, so a compiled network has few graphs."""
        if (device_type or x.device.type) != "cpu":
            return "batched"
        if self.kernel_size != (1, 1):
            return "native" if self._native_applies(x) else "grouped"
        (pad_h, pad_w), (stride_h, stride_w) = self.padding, self.stride
        pixels = -(-(x.shape[2] + 2 * pad_h) // stride_h) * -(-(x.shape[3] + 2 * pad_w) // stride_w)
        small = pixels <= STACKED_MAX_PIXELS and self.groups == 1 and x.shape[0] > 1
        return "stacked" if small else "batched"

    def _native_applies(self, x: Tensor) -> bool:
        """Whether the compiled depthwise kernel can run `x`: see `condnet.models.native`."""
        return self.groups == self.in_channels == self.out_channels and _native_runs(x)

    def _forward_native(self, x: Tensor, routing_weights: Tensor) -> Tensor:
        """Depthwise, one kernel per example, mixed straight into the (k, k, channels) layout
        the compiled kernel reads."""
        kernels = routing_weights @ self._experts_channels_last()
        # CPU autocast may give the product in bfloat16; the kernel reads the map's float32.
        kernels = kernels.to(x.dtype).reshape(-1, *self.kernel_size, self.out_channels)
        return native.per_example_depthwise(x, kernels, self.bias, self.stride[0], self.padding[0])

    def _forward_stacked(self, x: Tensor, routing_weights: Tensor) -> Tensor:
        """1x1, groups 1: ``sum_m W_m (r_m x)`` as one conv over M routing-scaled input copies."""
        batch, channels, height, width = x.shape
        scaled = x[:, None] * routing_weights[:, :, None, None, None]
        weight = self.weight.transpose(0, 1).reshape(self.out_channels, -1, 1, 1)
        scaled = scaled.reshape(batch, -1, height, width)
        return F.conv2d(scaled, weight, self.bias, self.stride, self.padding)

    def _forward_grouped(self, x: Tensor, routing_weights: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        # The bias goes into the convolution, once per example: no extra pass over the output.
        bias = self.bias if self.bias is None or batch == 1 else self.bias.repeat(batch)
        out = F.conv2d(
            x.reshape(1, batch * channels, height, width),
            self.mixed_weight(routing_weights),
            bias,
            self.stride,
            self.padding,
            groups=self.groups * batch,
        )
        return out.reshape(batch, self.out_channels, out.shape[-2], out.shape[-1])

    def _forward_batched(self, x: Tensor, routing_weights: Tensor) -> Tensor:
        if self.kernel_size != (1, 1):
            return self._forward_mixture(x, routing_weights)
        # A 1x1 conv is a matmul per example and group: (out, in) kernel times (in, pixels).
        if self.padding != (0, 0):  # zero rows and columns around, as nn.Conv2d pads
            x = F.pad(x, (self.padding[1], self.padding[1], self.padding[0], self.padding[0]))
        x = x[:, :, :: self.stride[0], :: self.stride[1]]
        out_h, out_w, groups = x.shape[2], x.shape[3], self.groups
        if groups == 1 and x.is_contiguous(memory_format=torch.channels_last):
            return self._pointwise_rows(x, routing_weights)
        weight = (routing_weights @ self.weight.reshape(self.num_experts, -1)).reshape(
            -1, groups, self.out_channels // groups, self.in_channels // groups
        )
        x = x.reshape(-1, groups, self.in_channels // groups, out_h * out_w)
        if self.bias is not None and groups == 1:  # the bias inside the product: no extra pass
            out = torch.baddbmm(self.bias[:, None], weight[:, 0], x[:, 0])
        else:
            out = weight @ x
            out = out if self.bias is None else out + self.bias.reshape(groups, -1, 1)
        return out.reshape(-1, self.out_channels, out_h, out_w)

    def _pointwise_rows(self, x: Tensor, routing_weights: Tensor) -> Tensor:
        """A channels_last map is a (pixels, in_channels) matrix per example: times the
        transposed kernel, mixed as such, it gives the output channels_last too, no copy.

        Without autograd on the CPU the batch goes in chunks whose mixed kernels fit in the
        CPU's cache (`MIXING_CACHE_FLOATS`), so each chunk's product reads them from there;
        on a GPU the whole batch is one product."""
        batch, _, height, width = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(batch, height * width, self.in_channels)
        whole = torch.is_grad_enabled() or torch.jit.is_tracing() or x.device.type != "cpu"
        chunk = batch if whole else self._mixing_chunk()
        if whole or chunk >= batch:  # `whole` first: no comparison of traced sizes
            out = self._rows_times_kernels(rows, routing_weights)
        else:
            out = rows.new_empty(batch, height * width, self.out_channels)
            for start in range(0, batch, chunk):
                part = slice(start, start + chunk)
                self._rows_times_kernels(rows[part], routing_weights[part], out=out[part])
        return out.reshape(batch, height, width, self.out_channels).permute(0, 3, 1, 2)

    def _mixing_chunk(self) -> int:
        """Examples per chunk in inference (in training chunks did not pay, measured, and an
        export needs one product for any batch)."""
        fits = MIXING_CACHE_FLOATS // (self.in_channels * self.out_channels)
        return max(MIN_MIXING_CHUNK, 1 << max(fits, 1).bit_length() - 1)

    def _rows_times_kernels(self, rows: Tensor, routing_weights: Tensor, out=None) -> Tensor:
        kernels = (routing_weights @ self._experts_channels_last()).reshape(
            -1, self.in_channels, self.out_channels
        )
        if self.bias is None:
            return torch.bmm(rows, kernels, out=out)
        return torch.baddbmm(self.bias, rows, kernels, out=out)

    def _experts_channels_last(self) -> Tensor:
        """The experts as rows of (in_channels / groups, k, k, out_channels) values: a view when
        the weight is stored channels_last_3d (`condnet.models.layout`), else a copy."""
        return self.weight.permute(0, 2, 3, 4, 1).reshape(self.num_experts, -1)

    def _forward_mixture(self, x: Tensor, routing_weights: Tensor) -> Tensor:
        """``sum_m r_m * conv(x, W_m)``: equal to the mixed kernel's conv because conv is linear."""
        out = None
        for m in range(self.num_experts):
            term = F.conv2d(x, self.weight[m], None, self.stride, self.padding, groups=self.groups)
            term = term * routing_weights[:, m, None, None, None]
            out = term if out is None else out + term
        return out if self.bias is None else out + self.bias[:, None, None]

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, groups={self.groups}, "
            f"num_experts={self.num_experts}, bias={self.bias is not None}, "
            f"formulation={self.formulation}"
        )


def _native_runs(x: Tensor) -> bool:
    """Whether `condnet.models.native` can run on `x`: a channels_last float32 map on the CPU,
    the kernel compiled, and no tracing for export."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.is_contiguous(memory_format=torch.channels_last)
        and not torch.jit.is_tracing()
        and native.kernel() is not None
    )


def set_formulation(module: nn.Module, formulation: str) -> nn.Module:
    """Switch every `CondConv2d` inside `module` to `formulation`, in place; returns `module`."""
    for layer in module.modules():
        if isinstance(layer, CondConv2d):
            layer.formulation = formulation
    return module
