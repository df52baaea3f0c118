"""Reading a model file of any kind that runs in PyTorch: safetensors weights or a checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from condnet.choices import WEIGHTS_SUFFIX
from condnet.config import load_config
from condnet.deploy.bundle import Bundle
from condnet.deploy.weights import read_weights
from condnet.engine.checkpoint import load_checkpoint
from condnet.engine.evaluation import evaluate_checkpoint, evaluate_model
from condnet.files import file_kind


def read_bundle(path: str | os.PathLike) -> Bundle:
    """A model file of either kind, told apart by its content: safetensors weights, or a
    checkpoint (a .pt file or a run folder)."""
    path = Path(path)
    if path.suffix == WEIGHTS_SUFFIX or (path.is_file() and file_kind(path) == "safetensors"):
        return read_weights(path)
    return Bundle.from_checkpoint(load_checkpoint(path))


def evaluate_model_file(
    path: str | os.PathLike,
    overrides: dict[str, Any],
    data: str | None = None,
    config: str | None = None,
) -> dict[str, Any]:
    """`condnet evaluate`: a checkpoint on its own data config (`evaluate_checkpoint`), or a
    weights file, which holds none, on the data of `config` (+ `data`, `overrides`),
    transformed as the file's eval transform says; `epoch` None for a weights file."""
    path = Path(path)
    if not (path.is_file() and file_kind(path) == "safetensors"):
        return evaluate_checkpoint(path, overrides, data)
    bundle = read_weights(path)
    spec = bundle.transform
    sizes = {"data.resize": spec.resize, "data.crop": spec.crop}
    sizes |= {"data.mean": list(spec.mean), "data.std": list(spec.std)}
    cfg = load_config(config, {**sizes, **overrides, **({"data.root": data} if data else {})})
    result = evaluate_model(bundle.model, bundle.class_names, cfg, whole_folder=bool(data))
    return {"checkpoint": str(path), "epoch": None, **result}
