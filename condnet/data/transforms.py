"""The paper's transforms with torchvision `transforms.v2`, and the eval transform as data.

Inputs are PIL images or uint8 tensors (C x H x W); outputs are normalised float32 tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torchvision.transforms import v2

from condnet.config import DataConfig
from condnet.errors import CondnetError
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


@dataclass(frozen=True)
class TransformSpec:
    """The eval transform as data: resize the short side, center-crop, normalise.

    The trainer writes it into every checkpoint (from the run's `DataConfig`), deployment files
    carry it, and `build` makes the transform that predict applies. The defaults are the
    paper's (a file without one: resize 64, crop 56, ImageNet's mean and std).
    """

    resize: int = DataConfig.resize
    crop: int = DataConfig.crop
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @classmethod
    def from_config(cls, cfg: DataConfig) -> TransformSpec:
        """The eval transform of a run's data settings."""
        return cls(cfg.resize, cfg.crop, tuple(cfg.mean), tuple(cfg.std))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> TransformSpec:
        """Read a checkpoint's ``eval_transform``; missing keys (or no dict) take defaults."""
        if data is not None and not isinstance(data, Mapping):
            raise CondnetError(f"eval_transform: expected a mapping, got {data!r}")
        data = dict(data or {})
        unknown = set(data) - {"resize", "crop", "mean", "std"}
        if unknown:
            raise CondnetError(f"eval_transform: unknown key {min(unknown)!r}")
        for key in ("mean", "std"):
            if key in data:
                if not isinstance(data[key], (list, tuple)):
                    raise CondnetError(f"eval_transform.{key}: expected a list, got {data[key]!r}")
                data[key] = tuple(data[key])
        spec = cls(**data)
        spec.validate()
        return spec

    def validate(self) -> None:
        for key in ("resize", "crop"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CondnetError(
                    f"eval_transform.{key}: expected a positive integer, got {value!r}"
                )
        for key in ("mean", "std"):
            value = getattr(self, key)
            if len(value) not in (1, 3) or not all(isinstance(v, (int, float)) for v in value):
                raise CondnetError(f"eval_transform.{key}: expected 1 or 3 numbers, got {value!r}")
        if any(s <= 0 for s in self.std):
            raise CondnetError(f"eval_transform.std: expected positive numbers, got {self.std!r}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def build(self) -> v2.Compose:
        """The torchvision transform: PIL image -> normalised float tensor (C x crop x crop)."""
        return eval_transform(self.resize, self.crop, self.mean, self.std)
