"""Settings given on resume: which may differ from the checkpoint's, and how they take effect.

What a run learns from is fixed when it starts: the network and its initial weights, the data
set and its subsets, the image sizes and normalisation, the seed. Changing one of these on
resume would silently make another experiment, so it is refused. Everything else (epochs, the
learning-rate and routing schedules, the optimizer's settings, augmentation, evaluation and how
the run computes) may change and applies from the first resumed epoch: the schedules are pure
functions of the epoch and the optimizer's settings are written into its restored parameter
groups (its momentum buffers are kept). README.md lists the keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from condnet.config import Config, TrainConfig
from condnet.errors import CondnetError

# A key, or a prefix ending in "." or "_" for a family of keys.
FIXED_ON_RESUME = (
    "model.",
    "data.source",
    "data.classes",
    "data.train_subset",
    "data.val_subset",
    "data.val_fraction",
    "data.resize",
    "data.crop",
    "data.mean",
    "data.std",
    "data.synthetic_",
    "run.seed",
    "train.routing_init",  # the initial weights: drawn once, at the start
    "train.expert_init",
    "train.init_weights",
    "train.init_classifier",
)


def flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys: {"train": {"epochs": 3}} -> {"train.epochs": 3}."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def changed_settings(old: Config, new: Config) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (old value, new value)} for every setting that differs."""
    before, after = flat(old.to_dict()), flat(new.to_dict())
    keys = sorted(set(before) | set(after))
    return {k: (before.get(k), after.get(k)) for k in keys if before.get(k) != after.get(k)}


def is_fixed(key: str) -> bool:
    return any(key == f or (f[-1] in "._" and key.startswith(f)) for f in FIXED_ON_RESUME)


def check_resume(old: Config, new: Config) -> dict[str, tuple[Any, Any]]:
    """The settings `new` changes from the run's `old` ones; refuses one that cannot change."""
    changes = changed_settings(old, new)
    _refuse_fixed(changes)
    return changes


def check_resume_overrides(saved: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    """Refuse a dotted override that changes a setting fixed on resume, before the new config
    is validated (a model override that the run's network would not use is refused as a
    change, not as a bad model)."""
    before = flat(saved)
    _refuse_fixed({k: (before.get(k), v) for k, v in overrides.items() if before.get(k) != v})


def _refuse_fixed(changes: Mapping[str, tuple[Any, Any]]) -> None:
    for key, (before, after) in changes.items():
        if is_fixed(key):
            raise CondnetError(
                f"{key}: cannot change on resume (the run has {before!r}, got "
                f"{after!r}); start a new run with --out instead"
            )


def apply_optimizer_settings(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> None:
    """Write the SGD settings of `cfg` into every parameter group (each group's `lr_scale`:
    `routing_lr_scale` times the calibrated factor for a CondConv router's group, else 1), and
    the optimizer's own `fused` and `foreach` choices, made for this run's device; `lr` is the
    schedule's."""
    for group in optimizer.param_groups:
        for key in ("fused", "foreach"):  # this run's device, not the checkpoint's
            group[key] = optimizer.defaults[key]
        group["momentum"] = cfg.momentum
        group["nesterov"] = cfg.nesterov and cfg.momentum > 0
        group["weight_decay"] = cfg.weight_decay
        group["lr_scale"] = (
            cfg.routing_lr_scale * group.get("calibration", 1.0) if group.get("routing") else 1.0
        )
