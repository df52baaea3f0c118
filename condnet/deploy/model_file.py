"""Reading a model file of any kind that runs in PyTorch: safetensors weights or a checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

from condnet.choices import WEIGHTS_SUFFIX
from condnet.deploy.bundle import Bundle
from condnet.deploy.weights import read_weights
from condnet.engine.checkpoint import load_checkpoint
from condnet.files import file_kind


def read_bundle(path: str | os.PathLike) -> Bundle:
    """A model file of either kind, told apart by its content: safetensors weights, or a
    checkpoint (a .pt file or a run folder)."""
    path = Path(path)
    if path.suffix == WEIGHTS_SUFFIX or (path.is_file() and file_kind(path) == "safetensors"):
        return read_weights(path)
    return Bundle.from_checkpoint(load_checkpoint(path))
