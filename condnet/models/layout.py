"""Weights in the channels_last memory format, for training and inference alike."""

from __future__ import annotations

import torch
from torch import nn


def channels_last_weights(model: nn.Module) -> nn.Module:
    """Store every 4-D parameter channels_last, in place; returns `model`.

    (`Module.to(memory_format=...)` refuses the 5-D CondConv expert weights.)
    """
    for param in model.parameters():
        if param.dim() == 4:
            param.data = param.data.contiguous(memory_format=torch.channels_last)
    return model
