"""The fastest form of a trained model for inference in PyTorch, computing the same function.

`prepare_inference` folds every BatchNorm into its convolution (`condnet.fuse`) and stores the
4-D weights channels_last, which on the CPU lets oneDNN run every convolution without layout
conversions (measured in `benchmarks/compare_timm.py`). Inputs may stay in either layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from condnet.deploy.fuse import fuse
from condnet.models.layout import channels_last_weights


class PointwiseConv2d(nn.Conv2d):
    """A 1x1, stride-1, ungrouped conv that runs a single channels_last image as one matmul.

    At batch 1 PyTorch sends such convs to its slow reference kernel; a channels_last image is
    already a (pixels x channels) matrix, so `F.linear` computes the same sums, bias included,
    with no copy (batch-1 latency of the SE network 24-27 -> 21 ms on 2 cores). Larger batches
    keep oneDNN's convolution, which was faster there (batch 64: 154 against 123 images/s).
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] != 1 or not x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)
        out = F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias)
        return out.permute(0, 3, 1, 2)


def _pointwise(conv: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.groups == 1
        and conv.padding == (0, 0)
    )


def pointwise_as_matmul(model: nn.Module) -> nn.Module:
    """Turn every plain 1x1 conv of `model` into a `PointwiseConv2d` (same weights), in place."""
    for module in model.modules():
        if _pointwise(module):
            module.__class__ = PointwiseConv2d  # same parameters and state dict keys
    return model


def prepare_inference(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """A copy of `model` in eval mode, BN folded, weights channels_last (with 1x1 convs as
    matmuls for single images); `model` is unchanged."""
    fused = fuse(model)
    return pointwise_as_matmul(channels_last_weights(fused)) if channels_last else fused
