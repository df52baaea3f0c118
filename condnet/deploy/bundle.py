"""A trained model with what inference needs beside its weights: class names, eval transform.

Deployment files (safetensors weights, ONNX) carry the same information as string metadata,
written by `Bundle.metadata` and read back by `read_metadata`, so each file is self-contained.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torchvision.transforms import v2

from condnet.data.transforms import eval_transform
from condnet.engine.checkpoint import model_from_checkpoint
from condnet.errors import CondnetError
from condnet.models import CondNet, NetSpec
from condnet.paper import IMAGENET_MEAN, IMAGENET_STD
from condnet.version import __version__

# Metadata keys shared by the safetensors and ONNX files.
SPEC_KEY = "condnet.model_spec"
CLASSES_KEY = "condnet.class_names"
TRANSFORM_KEY = "condnet.eval_transform"
VERSION_KEY = "condnet.version"


@dataclass(frozen=True)
class TransformSpec:
    """The eval transform as data: resize the short side, center-crop, normalise."""

    resize: int = 64
    crop: int = 56
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

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


@dataclass
class Bundle:
    """A model in eval mode with its class names and eval transform."""

    model: CondNet
    class_names: list[str]
    transform: TransformSpec

    def __post_init__(self) -> None:
        check_class_names(self.class_names, self.model.num_classes)

    @classmethod
    def from_checkpoint(cls, state: Mapping[str, Any]) -> Bundle:
        """From a checkpoint dict (see `condnet.engine.checkpoint`); trainer extras are ignored."""
        model = model_from_checkpoint(state)
        check_class_names(state["class_names"], model.num_classes)
        transform = TransformSpec.from_dict(state.get("eval_transform"))
        return cls(model, list(state["class_names"]), transform)

    def metadata(self) -> dict[str, str]:
        """String metadata for a deployment file: spec, class names, transform, version."""
        return {
            SPEC_KEY: json.dumps(self.model.spec.to_dict()),
            CLASSES_KEY: json.dumps(self.class_names),
            TRANSFORM_KEY: json.dumps(self.transform.to_dict()),
            VERSION_KEY: __version__,
        }


def check_class_names(names: Any, num_classes: int) -> None:
    """`names` must be a list of `num_classes` strings."""
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise CondnetError("class_names: expected a list of strings")
    if not all(isinstance(n, str) for n in names):
        raise CondnetError("class_names: expected a list of strings")
    if len(names) != num_classes:
        raise CondnetError(
            f"class_names: {len(names)} names for a model with {num_classes} classes"
        )


def read_metadata(meta: Mapping[str, str], source: str) -> tuple[NetSpec, list[str], TransformSpec]:
    """(spec, class names, eval transform) from metadata written by `Bundle.metadata`."""
    missing = [k for k in (SPEC_KEY, CLASSES_KEY, TRANSFORM_KEY) if k not in meta]
    if missing:
        raise CondnetError(f"{source}: not a condnet file (metadata {missing[0]!r} is missing)")
    try:
        spec, names, transform = (
            json.loads(meta[k]) for k in (SPEC_KEY, CLASSES_KEY, TRANSFORM_KEY)
        )
    except json.JSONDecodeError as err:
        raise CondnetError(f"{source}: unreadable condnet metadata ({err})") from None
    if not isinstance(spec, dict) or not isinstance(transform, dict):
        raise CondnetError(f"{source}: unreadable condnet metadata (expected JSON objects)")
    net_spec = NetSpec.from_dict(spec)
    check_class_names(names, net_spec.num_classes)
    return net_spec, list(names), TransformSpec.from_dict(transform)
