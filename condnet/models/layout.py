"""Weights in the channels_last memory format, for training and inference alike."""

from __future__ import annotations

import torch
from torch import nn


def channels_last_weights(model: nn.Module) -> nn.Module:
    """Store every 4-D parameter channels_last, in place; returns `model`.

    The 5-D CondConv experts (experts, out, in, k, k) go channels_last_3d: each expert's values
    in (in, k, k, out) order, the layout in which CondConv mixes the kernels it applies to
    channels_last maps. (`Module.to(memory_format=...)` refuses 5-D weights.)
    """
    formats = {4: torch.channels_last, 5: torch.channels_last_3d}
    for param in model.parameters():
        if param.dim() in formats:
            param.data = param.data.contiguous(memory_format=formats[param.dim()])
    return model
