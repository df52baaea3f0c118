"""An exported condnet model run by ONNX Runtime with NumPy alone: `condnet predict` with an
ONNX file never imports torch. Its metadata (spec, class names, eval transform) is read
without building the network."""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from condnet.data.transform_spec import TransformSpec
from condnet.errors import CondnetError, first_line

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
# Metadata keys shared by the safetensors and ONNX files.
SPEC_KEY = "condnet.model_spec"
CLASSES_KEY = "condnet.class_names"
TRANSFORM_KEY = "condnet.eval_transform"
VERSION_KEY = "condnet.version"


def require(module: str) -> ModuleType:
    """Import an optional deployment dependency, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise CondnetError(f"{module} is not installed: pip install condnet[deploy]") from None


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


class OnnxModel:
    """Images (N x C x H x W float32 array) in, logits (N x classes) out, in ONNX Runtime."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu") -> None:
        ort = require("onnxruntime")
        provider = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}[device]
        if provider not in ort.get_available_providers():
            raise CondnetError(f"onnxruntime has no {provider} here (pip install onnxruntime-gpu)")
        if not Path(path).is_file():
            raise CondnetError(f"ONNX file not found: {path}")
        try:
            self.session = ort.InferenceSession(str(path), providers=[provider])
        except Exception as err:  # noqa: BLE001 (onnxruntime's own exception types)
            raise CondnetError(f"{path}: not a readable ONNX model ({first_line(err)})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.spec_data, self.class_names, self.transform = read_metadata_json(meta, str(path))
        self.in_channels = int(self.spec_data.get("in_channels", 3))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        feed = {INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32)}
        return self.session.run([OUTPUT_NAME], feed)[0]
