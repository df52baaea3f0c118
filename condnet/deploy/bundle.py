"""A trained model with what inference needs beside its weights: class names, eval transform.

Deployment files (safetensors weights, ONNX) carry the same information as string metadata,
written by `Bundle.metadata` and read back by `read_metadata`, so each file is self-contained.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from condnet.data.transforms import TransformSpec
from condnet.engine.checkpoint import checkpoint_transform, model_from_checkpoint
from condnet.errors import CondnetError
from condnet.models import CondNet, NetSpec
from condnet.version import __version__

# Metadata keys shared by the safetensors and ONNX files.
SPEC_KEY = "condnet.model_spec"
CLASSES_KEY = "condnet.class_names"
TRANSFORM_KEY = "condnet.eval_transform"
VERSION_KEY = "condnet.version"


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
        transform = checkpoint_transform(state)
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
