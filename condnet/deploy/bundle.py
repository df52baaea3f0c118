"""A trained model with what inference needs beside its weights: class names, eval transform.

Deployment files (safetensors weights, ONNX) carry the same information as string metadata,
written by `Bundle.metadata` and read back by `read_metadata`, so each file is self-contained.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from condnet.data.transform_spec import TransformSpec
from condnet.deploy.metadata import (
    CLASSES_KEY,
    SPEC_KEY,
    TRANSFORM_KEY,
    VERSION_KEY,
    check_class_names,
    read_metadata_json,
)
from condnet.engine.checkpoint import checkpoint_transform, model_from_checkpoint
from condnet.models import CondNet, NetSpec
from condnet.version import __version__


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


def read_metadata(meta: Mapping[str, str], source: str) -> tuple[NetSpec, list[str], TransformSpec]:
    """(spec, class names, eval transform) from metadata written by `Bundle.metadata`."""
    spec, names, transform = read_metadata_json(meta, source)
    return NetSpec.from_dict(spec), names, transform
