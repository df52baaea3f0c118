"""Checkpoints: one schema, written atomically, read without unpickling arbitrary objects.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so that
`torch.load(weights_only=True)` can read it: a file that would run code on load is refused.
`checkpoint_state` builds it, with these keys:

- ``format_version``: `FORMAT_VERSION`; a file without the key is format 1, the same keys
  before the version was recorded;
- ``model`` and ``model_spec``: the state dict and the `NetSpec` (`rebuild_model` makes the
  network from them), ``class_names``, and ``eval_transform`` (a `TransformSpec`; a file
  without one gets the paper's): all that deployment reads;
- the trainer's: ``config``, ``optimizer``, ``epoch`` (the last finished one, -1 before the
  first), ``rng``, ``metrics``, ``best_top1``, ``resumes`` (settings changed on resume) and
  ``versions`` (condnet and torch).
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from condnet.config import Config
from condnet.data.transform_spec import TransformSpec
from condnet.engine.metrics import from_one
from condnet.errors import CondnetError, first_line
from condnet.files import file_kind, write_atomically
from condnet.models import CondNet, NetSpec
from condnet.version import __version__

FORMAT_KEY = "format_version"
FORMAT_VERSION = 3  # 3: epochs counted from 1 (`epoch`: how many finished)
READABLE_FORMATS = (1, 2, 3)  # 1: written before the key existed
REQUIRED_KEYS = ("model", "model_spec", "class_names")


# What a resume needs besides the weights, each at the top level of a checkpoint.
TRAINING_KEYS = ("optimizer", "epoch", "rng", "metrics", "best_top1", "resumes")


def checkpoint_state(
    model: CondNet,
    class_names: Sequence[str],
    *,
    eval_transform: TransformSpec | None = None,
    config: Config | None = None,
    training: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint of `model` as the trainer writes it. `training` holds what a resume
    needs (any of `TRAINING_KEYS`: the optimizer's state, the finished epoch, the generators,
    the metrics records, the best top-1, the settings changed on resume); keys given as None
    are left out."""
    unknown = sorted(set(training or {}) - set(TRAINING_KEYS))
    if unknown:
        raise ValueError(f"checkpoint_state: unknown training keys {unknown}")
    state = {
        FORMAT_KEY: FORMAT_VERSION,
        "model": model.state_dict(),
        "model_spec": model.spec.to_dict(),
        **{key: (training or {}).get(key) for key in TRAINING_KEYS},
        "config": config.to_dict() if config is not None else None,
        "class_names": list(class_names),
        "eval_transform": eval_transform.to_dict() if eval_transform is not None else None,
        "versions": {"condnet": __version__, "torch": str(torch.__version__)},
    }
    return {key: value for key, value in state.items() if value is not None}


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write `state` to `path` atomically (`condnet.files.write_atomically`): a crash at any
    moment leaves either the previous file or the new one, never a torn one."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(state, f)

    write_atomically(path, write)


def model_file(path: str | os.PathLike, last: bool = False) -> Path:
    """The file a model argument names: a file as given; a run folder's `best.pt` (its best
    validation top-1), or its `last.pt` with `last` or where there is no best.pt yet."""
    path = Path(path)
    if not path.is_dir():
        return path
    best = path / "best.pt"
    return best if best.is_file() and not last else path / "last.pt"


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a condnet checkpoint safely (weights only) onto the CPU; errors are one line."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise CondnetError(f"checkpoint not found: {path}")
    _check_kind(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        if not found:  # torch's message would advise turning the safe load off: not relayed
            raise CondnetError(f"{path}: not a checkpoint that loads safely") from None
        raise CondnetError(
            f"{path}: refused to load: it holds objects other than tensors and plain data "
            f"(it names {found.group(1)})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CondnetError(
            f"{path}: not a readable checkpoint (truncated or another format): {first_line(err)}"
        ) from None
    if isinstance(state, dict) and state.get(FORMAT_KEY, 1) not in READABLE_FORMATS:
        raise CondnetError(
            f"{path}: unknown checkpoint {FORMAT_KEY} {state[FORMAT_KEY]!r} "
            f"(condnet {__version__} reads {' and '.join(map(str, READABLE_FORMATS))})"
        )
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        raise CondnetError(
            f"{path}: not a condnet checkpoint (expected keys {', '.join(REQUIRED_KEYS)})"
        )
    return _epochs_from_one(state)


def _epochs_from_one(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint from before format 3 counted epochs from 0 (`epoch`: the last finished
    one's index): read it as format 3 does."""
    if state.get(FORMAT_KEY, 1) >= 3:
        return state
    if "epoch" in state:
        state["epoch"] += 1
    if state.get("metrics"):
        state["metrics"] = from_one(state["metrics"])
    state["resumes"] = [{**r, "epoch": r["epoch"] + 1} for r in state.get("resumes", [])]
    return state


NOT_A_CHECKPOINT = {
    "safetensors": (
        "a safetensors weights file, not a checkpoint: evaluate, predict and export read it"
    ),
    "onnx": "an ONNX model, not a checkpoint: condnet predict runs it",
    "image": "an image, not a checkpoint",
    "zip": "a zip archive, not a checkpoint",
    "text": "a text file, not a checkpoint",
    "unknown": "not a checkpoint (a file of unknown format)",
}


def _check_kind(path: Path) -> None:
    """Refuse, in one line saying what it is, a file that is not a torch.save file."""
    try:
        kind = file_kind(path)
    except OSError as err:
        raise CondnetError(f"{path}: cannot read ({err.strerror or err})") from None
    if kind != "torch":
        raise CondnetError(f"{path}: {NOT_A_CHECKPOINT[kind]}")


def rebuild_model(
    spec: NetSpec | Mapping[str, Any], weights: Mapping[str, torch.Tensor], mismatch: str
) -> CondNet:
    """The network of `spec` (or of its `to_dict()`) with `weights` loaded, in eval mode: how a
    checkpoint or a weights file becomes a model. Weights that do not fit are a one-line error
    beginning with `mismatch`."""
    model = CondNet(spec if isinstance(spec, NetSpec) else NetSpec.from_dict(spec))
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise CondnetError(f"{mismatch}: {first_line(err)}") from None
    return model.eval()


def model_from_checkpoint(state: Mapping[str, Any]) -> CondNet:
    """Rebuild the network recorded in a checkpoint and load its weights (eval mode)."""
    return rebuild_model(
        state["model_spec"], state["model"], "checkpoint weights do not fit its model spec"
    )


def checkpoint_transform(state: Mapping[str, Any]) -> TransformSpec:
    """The checkpoint's eval transform (the paper's when it has none)."""
    return TransformSpec.from_dict(state.get("eval_transform"))


CLASSIFIER = ("classifier.weight", "classifier.bias")


def load_initial_weights(model: CondNet, path: str, new_classifier: bool = False) -> None:
    """Load the weights of a checkpoint or a .safetensors file into `model` (a run's start),
    all of them, or all but the classifier when `new_classifier` (it keeps its fresh draw, for
    another class count). A weight missing, left over or of another shape is one line."""
    weights = _weights_of(Path(path))
    if new_classifier:
        weights = {k: v for k, v in weights.items() if k not in CLASSIFIER}
    own = model.state_dict()
    expected = set(own) - (set(CLASSIFIER) if new_classifier else set())
    for name in sorted(expected | set(weights)):
        problem = _misfit(weights.get(name), own.get(name))
        if problem:
            hint = "; train.init_classifier=new for another class count"
            raise CondnetError(
                f"train.init_weights: {path}: {name}: {problem}{hint if name in CLASSIFIER else ''}"
            )
    model.load_state_dict(weights, strict=not new_classifier)


def _misfit(given: torch.Tensor | None, own: torch.Tensor | None) -> str | None:
    """Why a weight from a file does not fit the network's (None: it fits)."""
    if given is None:
        return "missing"
    if own is None:
        return "not in this network"
    if given.shape != own.shape:
        return f"shape {tuple(given.shape)}, this network's {tuple(own.shape)}"
    return None


def _weights_of(path: Path) -> dict[str, torch.Tensor]:
    """The model weights a checkpoint or a safetensors file holds."""
    if not path.is_file():
        raise CondnetError(f"train.init_weights: file not found: {path}")
    if file_kind(path) == "safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return load_checkpoint(path)["model"]
