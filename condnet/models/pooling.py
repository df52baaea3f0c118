"""Global average pooling for the squeeze-and-excitation and routing branches."""

from __future__ import annotations

from torch import Tensor


def spatial_mean(x: Tensor) -> Tensor:
    """The mean over the spatial dims, shape (batch, channels): the value of ``x.mean((2, 3))``.

    Written as a sum over the pixels divided by their count, so that its gradient reaches `x`
    as a broadcast view, where the gradient of ``mean`` is a full-size tensor written to memory:
    the SE branch's forward and backward at 96 x 56 x 56, batch 64, took 27-32 ms instead of
    47-51 (`benchmarks/condconv_choices.py`).
    """
    return x.sum((2, 3)) / (x.shape[2] * x.shape[3])
