"""Evaluation: the validation pass of the one training loop, and a checkpoint evaluated on
the validation set its own config describes (`condnet evaluate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from condnet.config import from_dict
from condnet.data.datasets import load_splits
from condnet.data.sources import Split, read_imagefolder
from condnet.engine import distributed
from condnet.engine.checkpoint import load_checkpoint, model_from_checkpoint
from condnet.engine.diagnostics import RoutingMonitor
from condnet.engine.loaders import Loader, eval_loader, split_data
from condnet.engine.metrics import correct_topk
from condnet.engine.progress import count_bad_images, progress_bar
from condnet.engine.runtime import Runtime, make_runtime, place_model
from condnet.errors import CondnetError


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Loader,
    rt: Runtime,
    *,
    progress: bool = False,
    monitor: RoutingMonitor | None = None,
    on_bad_image: str = "skip",
) -> dict[str, float]:
    """Loss, top-1 and top-5 (percent) over the loader's examples, summed over all ranks.

    Rows labelled -100 (padding of a fixed-shape last batch) count nowhere. `monitor` collects
    the routing weights of every example. Unreadable images are left out, or stop the
    evaluation with `on_bad_image="error"`.
    """
    model.eval()
    if monitor is not None:
        monitor.start_eval()
    sums = torch.zeros(4, device=rt.device)  # loss, top-1 hits, top-5 hits, count
    for images, labels, bad in progress_bar(loader, len(loader), "eval", progress):
        count_bad_images(bad, on_bad_image)
        if labels.numel() == 0:
            continue
        images, labels = rt.to_device(images, labels)
        with rt.autocast():
            logits = model(images).float()
        if monitor is not None:
            monitor.observe_eval(labels)
        sums[0] += F.cross_entropy(logits, labels, reduction="sum")
        sums[1:3] += correct_topk(logits, labels)
        sums[3] += (labels >= 0).sum()
    loss, top1, top5, count = distributed.sum_across(sums, rt.dist).tolist()
    if count == 0:
        raise CondnetError("evaluation: the validation set has no readable images")
    return {
        "loss": loss / count,
        "top1": 100 * top1 / count,
        "top5": 100 * top5 / count,
        "count": int(count),
    }


def evaluate_checkpoint(
    path: str | Path, overrides: dict[str, Any] | None = None, data: str | None = None
) -> dict[str, Any]:
    """Validation loss, top-1 and top-5 of a checkpoint, with its own data config (+ overrides;
    the network is the checkpoint's, so `model.*` overrides are refused). `data`: another
    folder instead (for images, all of a plain folder of class folders), whose classes may be
    some of the checkpoint's (`classes` says how many matched). `epoch`: the epochs it had
    trained, counted from 1 as in the log."""
    _refuse_model_overrides(overrides)
    state = load_checkpoint(path)
    if "config" not in state:
        raise CondnetError(f"{path}: has no training config; cannot rebuild its validation set")
    cfg = from_dict(state["config"], {**(overrides or {}), **({"data.root": data} if data else {})})
    model = model_from_checkpoint(state)
    result = evaluate_model(model, list(state["class_names"]), cfg, whole_folder=bool(data))
    epoch = state.get("epoch")
    return {"checkpoint": str(path), "epoch": epoch, **result}


def evaluate_model(
    model: nn.Module, class_names: list[str], cfg, *, whole_folder: bool = False
) -> dict[str, Any]:
    """Loss, top-1, top-5, image and class counts of `model` (classes `class_names`) on the
    validation data `cfg` describes (`whole_folder`: all of a plain folder of class folders),
    with how it computed (`Runtime.record`)."""
    rt = make_runtime(cfg.run)
    val_split = _matched(_validation_split(cfg, whole_folder), class_names)
    val_set = split_data(cfg, rt, val_split, "val")
    model = place_model(model, rt)
    result = evaluate(model, eval_loader(cfg, val_set, rt), rt, on_bad_image=cfg.data.on_bad_image)
    classes = len(set(val_split.labels.tolist()))
    return {"classes": classes, **result, **rt.record()}


def _refuse_model_overrides(overrides: dict[str, Any] | None) -> None:
    changed = sorted(k for k in overrides or {} if k.startswith("model."))
    if changed:
        raise CondnetError(
            f"--set {changed[0]}: evaluate uses the checkpoint's own network; "
            "export it or train another to change it"
        )


def _validation_split(cfg, whole_folder: bool) -> Split:
    """The validation split `cfg` describes; with `whole_folder`, every image of a plain
    folder of class folders (another folder than the run's, none of it trained on)."""
    if whole_folder and cfg.data.source == "imagefolder":
        train, val = read_imagefolder(Path(cfg.data.root))
        if val is None:
            return train
    return load_splits(cfg.data, cfg.run.seed)[1]


def _matched(split: Split, names: list[str]) -> Split:
    """`split` with its labels renumbered as the checkpoint's classes `names`; its classes
    must be some of them."""
    if split.class_names == names:
        return split
    unknown = [n for n in split.class_names if n not in names]
    if unknown or len(split.class_names) > len(names):
        raise CondnetError(
            f"the data has {len(split.class_names)} classes, the checkpoint {len(names)}"
            + (f" (class {unknown[0]!r} is not one of the checkpoint's)" if unknown else "")
        )
    index = np.array([names.index(n) for n in split.class_names], dtype=np.int64)
    return Split(split.images, index[split.labels], names)
