"""An exported condnet model run by ONNX Runtime with NumPy alone: `condnet predict` with an
ONNX file never imports torch. Its metadata (spec, class names, eval transform) is read
without building the network."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import numpy as np

from condnet.deploy.metadata import read_metadata_json
from condnet.errors import CondnetError, first_line

INPUT_NAME = "images"
OUTPUT_NAME = "logits"


def require(module: str) -> ModuleType:
    """Import an optional deployment dependency, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise CondnetError(f"{module} is not installed: pip install condnet[deploy]") from None


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
