"""The fastest form of a trained model for inference in PyTorch, computing the same function.

`prepare_inference` folds every BatchNorm into its convolution (`condnet.fuse`) and stores the
4-D weights channels_last, which on the CPU lets oneDNN run every convolution without layout
conversions (measured in `benchmarks/compare_timm.py`). Inputs may stay in either layout.
"""

from __future__ import annotations

import torch
from torch import nn

from condnet.fuse import fuse


def channels_last_weights(model: nn.Module) -> nn.Module:
    """Store every 4-D parameter channels_last, in place; returns `model`.

    (`Module.to(memory_format=...)` refuses the 5-D CondConv expert weights.)
    """
    for param in model.parameters():
        if param.dim() == 4:
            param.data = param.data.contiguous(memory_format=torch.channels_last)
    return model


def prepare_inference(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """A copy of `model` in eval mode, BN folded, weights channels_last; `model` is unchanged."""
    fused = fuse(model)
    return channels_last_weights(fused) if channels_last else fused
