"""Checkpoints: written atomically, read without unpickling arbitrary objects.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so that
`torch.load(weights_only=True)` can read it: a file that would run code on load is refused.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from condnet.errors import CondnetError
from condnet.files import fsync_dir
from condnet.models import CondNet, NetSpec

REQUIRED_KEYS = ("model", "model_spec", "class_names")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write `state` to `path` atomically: a temporary file in the same folder, fsync, rename.

    A crash at any moment leaves either the previous file or the new one, never a torn one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a condnet checkpoint safely (weights only) onto the CPU; errors are one line."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise CondnetError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        if not found:
            raise CondnetError(f"{path}: not a readable checkpoint ({_first_line(err)})") from None
        raise CondnetError(
            f"{path}: refused to load: it holds objects other than tensors and plain data "
            f"(it names {found.group(1)})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CondnetError(f"{path}: not a readable checkpoint (truncated or another format): {_first_line(err)}") from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        raise CondnetError(f"{path}: not a condnet checkpoint (expected keys {', '.join(REQUIRED_KEYS)})")
    return state


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def model_from_checkpoint(state: dict[str, Any]) -> CondNet:
    """Rebuild the network recorded in a checkpoint and load its weights (eval mode)."""
    model = CondNet(NetSpec.from_dict(state["model_spec"]))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CondnetError(f"checkpoint weights do not fit its model spec: {_first_line(err)}") from None
    return model.eval()
