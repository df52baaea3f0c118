"""The metadata a deployment file (safetensors or ONNX) carries beside the weights: the model
spec, the class names, the eval transform and condnet's version, as JSON strings. Read here
without building the network (no torch)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from condnet.data.transform_spec import TransformSpec
from condnet.errors import CondnetError

SPEC_KEY = "condnet.model_spec"
CLASSES_KEY = "condnet.class_names"
TRANSFORM_KEY = "condnet.eval_transform"
VERSION_KEY = "condnet.version"


def read_metadata_json(
    meta: Mapping[str, str], source: str
) -> tuple[dict[str, Any], list[str], TransformSpec]:
    """(spec as data, class names, eval transform) from metadata written by
    `condnet.deploy.bundle.Bundle.metadata`; the class names must fit the spec's count."""
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
    check_class_names(names, spec.get("num_classes", len(names) if isinstance(names, list) else 0))
    return spec, list(names), TransformSpec.from_dict(transform)


def check_class_names(names: Any, num_classes: int) -> None:
    """`names` must be a list of `num_classes` strings."""
    if isinstance(names, str) or not isinstance(names, list | tuple):
        raise CondnetError("class_names: expected a list of strings")
    if not all(isinstance(n, str) for n in names):
        raise CondnetError("class_names: expected a list of strings")
    if len(names) != num_classes:
        raise CondnetError(
            f"class_names: {len(names)} names for a model with {num_classes} classes"
        )
