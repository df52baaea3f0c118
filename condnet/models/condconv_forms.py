"""CondConv's formulations: pure functions that each compute the same per-example convolution.

Every function here takes ``(x, weight, routing_weights, bias, stride, padding, groups)``:
`x` of shape (batch, in_channels, H, W), the experts `weight` of shape (num_experts,
out_channels, in_channels / groups, k, k), `routing_weights` of shape (batch, num_experts), an
optional per-output-channel `bias` added after the convolution, and `stride` and `padding` as
pairs. Each returns ``conv(x[i], sum_m r[i, m] * weight[m]) + bias`` for every example i,
within float32 rounding, the way its name says:

- `grouped`: the per-example kernels mixed, then one grouped convolution with the batch folded
  into the channels (any kernel; its group count depends on the batch size).
- `mixture`: ``sum_m r_m * conv(x, W_m)``, exact because convolution is linear (any kernel;
  cheap for a depthwise kernel; keeps a channels_last map channels_last).
- `matmul`: a 1x1 kernel as one batched matrix product of the mixed kernels with the input
  viewed as (batch, groups, in_channels / groups, pixels).
- `rows`: a 1x1 kernel, groups 1, on a channels_last map, which is a (pixels, in_channels)
  matrix per example: times the mixed kernels, transposed as the channels_last experts already
  are, it gives the output channels_last with no copy. Without autograd on the CPU the batch
  goes in chunks whose kernels fit in the cache (`MIXING_CACHE_FLOATS`).
- `stacked`: a 1x1 kernel, groups 1, as ``[W_1 .. W_M] @ [r_1 x; ..; r_M x]``: one dense
  convolution over the routing-scaled input copies, which never builds per-example kernels
  (their size, batch x weights, dominates when the map is small).
- `native`: a depthwise kernel on a channels_last float32 CPU map, convolved with each
  example's mixed kernel directly by the compiled kernel of `condnet.models.native`.

`FORMS` lists them by name and `applies` says which can run a given layer and input.
`condnet.models.condconv.CondConv2d` holds the experts and the routing, and picks one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from condnet.models import native as native_kernel

Pair = tuple[int, int]

# `rows` without autograd on the CPU mixes the kernels of as many examples at a time as fit in
# this many floats (8 MiB, a share of a server CPU's cache), and at least MIN_MIXING_CHUNK.
MIXING_CACHE_FLOATS = 1 << 21
MIN_MIXING_CHUNK = 8


def mixed_kernels(routing_weights: Tensor, weight: Tensor) -> Tensor:
    """Per-example kernels, shape (batch * out_channels, in_channels / groups, k, k)."""
    mixed = routing_weights @ weight.reshape(weight.shape[0], -1)
    return mixed.reshape(-1, *weight.shape[2:])


def experts_channels_last(weight: Tensor) -> Tensor:
    """The experts as rows of (in_channels / groups, k, k, out_channels) values: a view when
    the weight is stored channels_last_3d (`condnet.models.layout`), else a copy."""
    return weight.permute(0, 2, 3, 4, 1).reshape(weight.shape[0], -1)


def grouped(x, weight, routing_weights, bias, stride: Pair, padding: Pair, groups: int) -> Tensor:
    batch, channels, height, width = x.shape
    # The bias goes into the convolution, once per example: no extra pass over the output.
    bias = bias if bias is None or batch == 1 else bias.repeat(batch)
    out = F.conv2d(
        x.reshape(1, batch * channels, height, width),
        mixed_kernels(routing_weights, weight),
        bias,
        stride,
        padding,
        groups=groups * batch,
    )
    return out.reshape(batch, weight.shape[1], out.shape[-2], out.shape[-1])


def mixture(x, weight, routing_weights, bias, stride: Pair, padding: Pair, groups: int) -> Tensor:
    out = None
    for m in range(weight.shape[0]):
        term = F.conv2d(x, weight[m], None, stride, padding, groups=groups)
        term = term * routing_weights[:, m, None, None, None]
        out = term if out is None else out + term
    return out if bias is None else out + bias[:, None, None]


def _pad_and_stride(x: Tensor, stride: Pair, padding: Pair) -> Tensor:
    """What a 1x1 convolution reads of `x`: zero rows and columns around, as nn.Conv2d pads,
    then every stride-th pixel."""
    if padding != (0, 0):
        x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    return x[:, :, :: stride[0], :: stride[1]]


def matmul(x, weight, routing_weights, bias, stride: Pair, padding: Pair, groups: int) -> Tensor:
    x = _pad_and_stride(x, stride, padding)
    out_channels, group_in = weight.shape[1], weight.shape[2]
    out_h, out_w = x.shape[2], x.shape[3]
    kernels = mixed_kernels(routing_weights, weight).reshape(
        -1, groups, out_channels // groups, group_in
    )
    x = x.reshape(-1, groups, group_in, out_h * out_w)
    if bias is not None and groups == 1:  # the bias inside the product: no extra pass
        out = torch.baddbmm(bias[:, None], kernels[:, 0], x[:, 0])
    else:
        out = kernels @ x
        out = out if bias is None else out + bias.reshape(groups, -1, 1)
    return out.reshape(-1, out_channels, out_h, out_w)


def rows(x, weight, routing_weights, bias, stride: Pair, padding: Pair, groups: int) -> Tensor:
    x = _pad_and_stride(x, stride, padding)
    batch, in_channels, height, width = x.shape
    out_channels = weight.shape[1]
    pixels = x.permute(0, 2, 3, 1).reshape(batch, height * width, in_channels)
    experts = experts_channels_last(weight)
    whole = torch.is_grad_enabled() or torch.jit.is_tracing() or x.device.type != "cpu"
    chunk = batch if whole else mixing_chunk(in_channels, out_channels)
    if whole or chunk >= batch:  # `whole` first: no comparison of traced sizes
        out = rows_times_kernels(pixels, routing_weights, experts, bias)
    else:
        out = pixels.new_empty(batch, height * width, out_channels)
        for start in range(0, batch, chunk):
            part = slice(start, start + chunk)
            rows_times_kernels(pixels[part], routing_weights[part], experts, bias, out=out[part])
    return out.reshape(batch, height, width, out_channels).permute(0, 3, 1, 2)


def mixing_chunk(in_channels: int, out_channels: int) -> int:
    """Examples per chunk of `rows` in inference on the CPU (in training chunks did not pay,
    measured, and an export needs one product for any batch)."""
    fits = MIXING_CACHE_FLOATS // (in_channels * out_channels)
    return max(MIN_MIXING_CHUNK, 1 << max(fits, 1).bit_length() - 1)


def rows_times_kernels(pixels, routing_weights, experts, bias, out=None) -> Tensor:
    """(batch, pixels, in) rows times each example's mixed (in, out) kernel, plus the bias."""
    in_channels = pixels.shape[2]
    kernels = (routing_weights @ experts).reshape(-1, in_channels, experts.shape[1] // in_channels)
    if bias is None:
        return torch.bmm(pixels, kernels, out=out)
    return torch.baddbmm(bias, pixels, kernels, out=out)


def stacked(x, weight, routing_weights, bias, stride: Pair, padding: Pair, groups: int) -> Tensor:
    batch, channels, height, width = x.shape
    scaled = x[:, None] * routing_weights[:, :, None, None, None]
    weight = weight.transpose(0, 1).reshape(weight.shape[1], -1, 1, 1)
    scaled = scaled.reshape(batch, -1, height, width)
    return F.conv2d(scaled, weight, bias, stride, padding)


def native(x, weight, routing_weights, bias, stride: Pair, padding: Pair, groups: int) -> Tensor:
    kernels = routing_weights @ experts_channels_last(weight)
    # CPU autocast may give the product in bfloat16; the kernel reads the map's float32.
    kernels = kernels.to(x.dtype).reshape(-1, *weight.shape[-2:], weight.shape[1])
    return native_kernel.per_example_depthwise(x, kernels, bias, stride[0], padding[0])


FORMS = {
    "grouped": grouped,
    "mixture": mixture,
    "matmul": matmul,
    "rows": rows,
    "stacked": stacked,
    "native": native,
}


def applies(name: str, weight: Tensor, groups: int, x: Tensor) -> bool:
    """Whether form `name` can compute a layer with experts `weight` and `groups` on `x`."""
    pointwise = weight.shape[-2:] == (1, 1)
    if name in ("grouped", "mixture"):
        return True
    if name == "matmul":
        return pointwise
    if name in ("rows", "stacked"):
        return pointwise and groups == 1
    depthwise = groups == weight.shape[1] == x.shape[1] and weight.shape[2] == 1
    return name == "native" and depthwise and native_runs(x)


def native_runs(x: Tensor) -> bool:
    """Whether `condnet.models.native` can run on `x`: a channels_last float32 map on the CPU,
    the kernel compiled, and no tracing for export."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.is_contiguous(memory_format=torch.channels_last)
        and not torch.jit.is_tracing()
        and native_kernel.available()
    )
