"""Helpers for the deployment tests: trained-looking models and checkpoints written to disk."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import condnet
from condnet.engine.checkpoint import save_checkpoint

# Small enough for quick tests, with every block kind's structure intact.
SMALL = {"widths": [8, 8, 16, 16, 24, 24], "repeats": [1, 2, 1, 1, 2, 1], "head_channels": 32}
CLASS_NAMES = ["apple", "bee", "cat", "dune", "eel", "fig", "gnu"]
EVAL_TRANSFORM = {"resize": 40, "crop": 32, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}


@torch.no_grad()
def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial statistics and affine terms, and make the logits O(1).

    A freshly built model has identity BNs and tiny logits, which would hide folding mistakes.
    """
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            for tensor, low, high in (
                (module.running_mean, -0.5, 0.5), (module.running_var, 0.5, 2.0),
                (module.weight, 0.5, 1.5), (module.bias, -0.3, 0.3),
            ):  # fmt: skip
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
    classifier = model.classifier
    classifier.weight.copy_(torch.randn(classifier.weight.shape, generator=generator) * 0.5)
    return model.eval()


def small_model(block: str, num_classes: int = len(CLASS_NAMES), **overrides) -> condnet.CondNet:
    name = f"paper-{block}"
    return trained_like(condnet.build_model(name, num_classes=num_classes, **(SMALL | overrides)))


def write_checkpoint(path: Path, model: condnet.CondNet, eval_transform: dict | None = None) -> Path:
    """A checkpoint as the trainer writes it (the extras that deployment ignores included)."""
    state = {
        "model": model.state_dict(),
        "model_spec": model.spec.to_dict(),
        "class_names": CLASS_NAMES[: model.num_classes],
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": 3,
    }
    if eval_transform is not None:
        state["eval_transform"] = eval_transform
    save_checkpoint(state, path)
    return path
