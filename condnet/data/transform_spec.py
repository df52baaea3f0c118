"""The eval transform as data (resize the short side, center-crop, normalise), with no torch:
checkpoints, weights and ONNX files carry it, and predicting with an ONNX model applies it
with Pillow and NumPy alone."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from condnet.errors import CondnetError
from condnet.paper import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    from condnet.config import DataConfig


@dataclass(frozen=True)
class TransformSpec:
    """The eval transform as data: resize the short side, center-crop, normalise.

    The trainer writes it into every checkpoint (from the run's `DataConfig`), deployment files
    carry it, and `build` makes the transform that predict applies. The defaults are the
    paper's (a file without one: resize 64, crop 56, ImageNet's mean and std).
    """

    resize: int = 64  # DataConfig's defaults, the paper's (a test holds them equal)
    crop: int = 56
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

    def build(self):
        """The torchvision transform: PIL image -> normalised float tensor (C x crop x crop)."""
        from condnet.data.transforms import eval_transform

        return eval_transform(self.resize, self.crop, self.mean, self.std)

    def to_array(self, image: Image.Image) -> np.ndarray:
        """The same transform with Pillow and NumPy alone (no torch): a normalised float32
        array, C x crop x crop. torchvision resizes a PIL image with Pillow's bilinear filter
        and center-crops at the rounded offset, as here; the tests hold the two equal."""
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        size = (self.resize, int(self.resize * long / short))
        new_w, new_h = size if width <= height else size[::-1]
        if (new_w, new_h) != (width, height):
            image = image.resize((new_w, new_h), Image.BILINEAR)
        top, left = round((new_h - self.crop) / 2.0), round((new_w - self.crop) / 2.0)
        image = image.crop((left, top, left + self.crop, top + self.crop))
        pixels = np.asarray(image, dtype=np.float32).reshape(self.crop, self.crop, -1) / 255
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return ((pixels - mean) / std).transpose(2, 0, 1).copy()
