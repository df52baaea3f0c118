"""safetensors weights files, with the metadata that makes them self-contained.

A weights file holds the unfused state dict (so training can resume from it) and, as metadata,
the model spec, class names, eval transform and condnet version: `load_pretrained` rebuilds the
model from the file alone. safetensors runs no code on load, unlike a pickle.
"""

from __future__ import annotations

import os
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from condnet.deploy.bundle import Bundle, read_metadata
from condnet.engine.checkpoint import rebuild_model
from condnet.errors import CondnetError
from condnet.files import write_atomically
from condnet.models import CondNet


def save_weights(bundle: Bundle, path: str | os.PathLike) -> None:
    """Write the model's state dict and metadata to `path` atomically."""
    state = {k: v.detach().contiguous() for k, v in bundle.model.state_dict().items()}
    metadata = {"format": "pt", **bundle.metadata()}
    write_atomically(path, lambda tmp: save_file(state, tmp, metadata=metadata))


def read_weights(path: str | os.PathLike) -> Bundle:
    """The model (eval mode), class names and eval transform stored in a weights file."""
    path = Path(path)
    if not path.is_file():
        raise CondnetError(f"weights file not found: {path}")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as err:
        raise CondnetError(f"{path}: not a readable safetensors file ({err})") from None
    spec, class_names, transform = read_metadata(meta, str(path))
    model = rebuild_model(spec, state, f"{path}: weights do not fit the model spec")
    return Bundle(model, class_names, transform)


def load_pretrained(path: str | os.PathLike) -> CondNet:
    """Rebuild the model (eval mode) from a weights file written by `condnet export --weights`."""
    return read_weights(path).model
