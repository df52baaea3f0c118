"""Reading a model file of any kind that runs in PyTorch: safetensors weights or a checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

from condnet.deploy.bundle import Bundle
from condnet.deploy.weights import WEIGHTS_SUFFIX, read_weights
from condnet.engine.checkpoint import load_checkpoint


def read_bundle(path: str | os.PathLike) -> Bundle:
    """A model file of either kind: ``.safetensors`` weights or a checkpoint (.pt, run folder)."""
    if Path(path).suffix == WEIGHTS_SUFFIX:
        return read_weights(path)
    return Bundle.from_checkpoint(load_checkpoint(path))
