"""The paper's transforms with torchvision `transforms.v2` (the eval transform as data is
`condnet.data.transform_spec.TransformSpec`).

Inputs are PIL images or uint8 tensors (C x H x W); outputs are normalised float32 tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from condnet.paper import IMAGENET_MEAN, IMAGENET_STD


def train_transform(
    crop: int = 56,
    *,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """RandomResizedCrop(crop, scale, ratio), a horizontal flip with probability `hflip`,
    normalisation."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(crop, scale=tuple(scale), ratio=tuple(ratio), antialias=True),
            v2.RandomHorizontalFlip(hflip),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


def eval_transform(
    resize: int = 64,
    crop: int = 56,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Resize the short side to `resize`, center-crop `crop`, normalise."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(resize, antialias=True),
            v2.CenterCrop(crop),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )
