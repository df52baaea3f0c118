"""Helpers for the deployment tests: trained-looking models and checkpoints written to disk."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import condnet
from condnet.data.transform_spec import TransformSpec
from condnet.engine.checkpoint import checkpoint_state, save_checkpoint

# Small enough for quick tests, with every block kind's structure intact.
SMALL = {"widths": [8, 8, 16, 16, 24, 24], "repeats": [1, 2, 1, 1, 2, 1], "head_channels": 32}
CLASS_NAMES = ["apple", "bee", "cat", "dune", "eel", "fig", "gnu"]
EVAL_TRANSFORM = {"resize": 40, "crop": 32, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}


@torch.no_grad()
def trained_like(
    model: nn.Module, resolution: int = 32, logit_spread: float = 1.0, seed: int = 0
) -> nn.Module:
    """Random BN affine terms, running statistics from data, logits that vary by about
    `logit_spread` from image to image; eval mode.

    A freshly built model has identity BNs and tiny logits, which would hide folding mistakes.
    Random images give pooled features that differ little, so spreading the logits amplifies
    float32 rounding as well: deep test models get a smaller `logit_spread`.
    """
    generator = torch.Generator().manual_seed(seed)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.weight.copy_(torch.rand(bn.weight.shape, generator=generator) + 0.5)
        bn.bias.copy_(torch.rand(bn.bias.shape, generator=generator) * 0.4 - 0.2)
    calibrate_batch_norms(model, generator, resolution)
    # Classifier: logits centred on the calibration data.
    features = model.forward_head(
        model.forward_features(_images(generator, 16, model.spec.in_channels, resolution)), True
    )
    weight = torch.randn(model.classifier.weight.shape, generator=generator)
    weight *= logit_spread / ((features - features.mean(0)) @ weight.T).std()
    model.classifier.weight.copy_(weight)
    model.classifier.bias.copy_(-(features.mean(0) @ weight.T))
    return model.eval()


@torch.no_grad()
def calibrate_batch_norms(
    model: nn.Module, generator: torch.Generator, resolution: int, batch: int = 8
) -> nn.Module:
    """Every BatchNorm's running statistics from two train-mode passes over random images (a
    cumulative average), so that eval mode normalises by statistics of real activations rather
    than a new layer's 0 and 1; eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for _ in range(2):
        model(_images(generator, batch, model.spec.in_channels, resolution))
    for bn in bns:
        bn.momentum = 0.1
    return model.eval()


def _images(generator: torch.Generator, batch: int, channels: int, size: int) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, generator=generator)


def small_model(block: str, num_classes: int = len(CLASS_NAMES), **overrides) -> condnet.CondNet:
    name = f"paper-{block}"
    return trained_like(condnet.build_model(name, num_classes=num_classes, **(SMALL | overrides)))


def write_checkpoint(
    path: Path, model: condnet.CondNet, eval_transform: dict | None = None
) -> Path:
    """A checkpoint as the trainer writes it (the extras that deployment ignores included);
    without `eval_transform`, one that has none."""
    transform = TransformSpec.from_dict(eval_transform) if eval_transform is not None else None
    state = checkpoint_state(
        model,
        CLASS_NAMES[: model.num_classes],
        eval_transform=transform,
        training={"optimizer": {"state": {}, "param_groups": []}, "epoch": 3},
    )
    save_checkpoint(state, path)
    return path
