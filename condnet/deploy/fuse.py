"""Fold every BatchNorm into the convolution before it, for inference.

In eval mode BN is an affine map per channel, ``y = scale * (x - mean) + beta`` with
``scale = gamma / sqrt(var + eps)``, so ``BN(conv(x, W))`` equals ``conv(x, scale * W) + bias``
with ``bias = beta - scale * mean``. For a CondConv the scale goes into every expert: the kernel
mixing is linear, so ``sum_m r_m * (scale * W_m) = scale * sum_m r_m * W_m``, and the bias is
added after the mixed convolution.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from condnet.models.blocks import CondConvNormAct, ConvNormAct
from condnet.models.condconv import CondConv2d


def fuse(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with each conv + BN pair folded into one conv with a bias.

    The folded BNs become `nn.Identity`; `model` itself is left as it was.
    """
    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if isinstance(module, (ConvNormAct, CondConvNormAct)) and _foldable(module.bn):
            module.conv = fold_batch_norm(module.conv, module.bn)
            module.bn = nn.Identity()
    return fused


def _foldable(bn: nn.Module) -> bool:
    """Only a BN that normalises with running statistics in eval mode is an affine map."""
    return isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None


@torch.no_grad()
def fold_batch_norm(conv: nn.Conv2d | CondConv2d, bn: nn.BatchNorm2d) -> nn.Module:
    """A new conv that computes ``bn(conv(x))`` of the eval-mode `bn`, with a bias."""
    scale, shift = _affine(bn)
    old_bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(shift)
    folded = copy.deepcopy(conv)
    # The expert (or output-channel) axis of the weight is the one that `scale` multiplies.
    axis = 1 if isinstance(conv, CondConv2d) else 0
    shape = [1] * conv.weight.dim()
    shape[axis] = -1
    folded.weight.copy_((conv.weight.double() * scale.reshape(shape)).to(conv.weight.dtype))
    bias = (old_bias * scale + shift).to(conv.weight.dtype)
    folded.bias = nn.Parameter(bias)
    return folded


def _affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """(scale, shift) per channel, in float64, such that ``bn(x) = scale * x + shift``."""
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - scale * mean
