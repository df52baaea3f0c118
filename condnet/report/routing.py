"""Figures and a table of a CondConv run's routing diagnostics (`routing.jsonl`).

- by class: the mean routing weight of each expert for each class, one panel per block, at the
  last evaluated epoch (the analysis of the CondConv paper's figures on routing);
- over training: per block, the fraction of saturated routing weights, their entropy over
  experts, the routers' gradient-to-weight ratio against the experts' (before any cap), the
  factor the cap applied, the mixed kernel's norm and the largest BN running variance, at every
  sampled training step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402

from condnet.engine.routing_log import ROUTING_FILE, read_routing  # noqa: E402
from condnet.errors import CondnetError  # noqa: E402


def routing_records(folder: str | Path) -> list[dict[str, Any]]:
    """The run's routing records; a one-line error when it has none."""
    records = read_routing(folder)
    if not any(r["phase"] == "val" for r in records):
        raise CondnetError(
            f"{folder}: no {ROUTING_FILE} with an evaluated epoch (only CondConv runs write one)"
        )
    return records


def last_eval(records: list[dict[str, Any]]) -> dict[str, Any]:
    return [r for r in records if r["phase"] == "val"][-1]


def plot_by_class(
    records: list[dict[str, Any]], path: Path, class_names: Sequence[str] = ()
) -> Path:
    """Mean routing weight per class and expert, one heat map per block (last evaluated epoch)."""
    record = last_eval(records)
    blocks = record["blocks"]
    cols = min(4, len(blocks))
    rows = math.ceil(len(blocks) / cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(3.4 * cols, 1.9 * rows + 1.2),
        dpi=110,
        squeeze=False,
        layout="constrained",
    )
    top = max(max(max(c) for c in block) for block in record["per_class"])
    # The grid may hold more axes than there are blocks: the spare ones are switched off below.
    for i, (ax, block, per_class) in enumerate(
        zip(axes.flat, blocks, record["per_class"], strict=False)
    ):
        image = ax.imshow(
            [list(col) for col in zip(*per_class, strict=True)],
            aspect="auto",
            cmap="viridis",
            vmin=0,
            vmax=top,
        )
        ax.set_title(block["block"], fontsize=8)
        ax.set_yticks(range(len(per_class[0])))
        ax.tick_params(labelsize=6)
        bottom = i >= len(blocks) - cols
        if class_names and len(class_names) <= 20 and bottom:
            ax.set_xticks(range(len(class_names)), class_names, rotation=90, fontsize=6)
        elif not bottom:
            ax.set_xticks([])
        if i % cols == 0:
            ax.set_ylabel("expert", fontsize=7)
    for ax in list(axes.flat)[len(blocks) :]:
        ax.axis("off")
    fig.colorbar(image, ax=axes, shrink=0.6, label="mean routing weight")
    if not class_names or len(class_names) > 20:
        fig.supxlabel("class index", fontsize=8)
    fig.suptitle(f"Mean routing weight per class (x) and expert (y), epoch {record['epoch']}")
    fig.savefig(path)
    plt.close(fig)
    return path


TRAINING_PANELS = (
    ("saturated", "routing weights < 0.05 or > 0.95", False),
    ("entropy", "entropy over experts (1: uniform)", False),
    ("grad_ratio", "router / expert grad-to-weight ratio, before the cap", True),
    ("cap_factor", "factor the cap applied (1: none)", True),
    ("kernel_norm_mean", "mixed kernel norm / expert norm", False),
    ("bn_var_max", "largest BN running variance", True),
)


def plot_training(records: list[dict[str, Any]], path: Path) -> Path:
    """The training-side diagnostics per block over the sampled steps."""
    samples = [r for r in records if r["phase"] == "train"]
    if not samples:
        raise CondnetError(f"{ROUTING_FILE} has no training samples (run.routing_stats_every=0?)")
    steps = {}
    for r in samples:
        steps[r["epoch"]] = max(steps.get(r["epoch"], 0), r["step"] + 1)
    x = [r["epoch"] - 1 + r["step"] / steps[r["epoch"]] for r in samples]  # epoch 1 from 0
    fig, axes = plt.subplots(
        1, len(TRAINING_PANELS), figsize=(4 * len(TRAINING_PANELS), 3.6), dpi=110
    )
    names = [b["block"] for b in samples[0]["blocks"]]
    colors = plt.cm.viridis([i / max(len(names) - 1, 1) for i in range(len(names))])
    for ax, (key, title, log) in zip(axes, TRAINING_PANELS, strict=True):
        for i, name in enumerate(names):
            ax.plot(
                x,
                [_train_value(r["blocks"][i], key) for r in samples],
                color=colors[i],
                lw=1,
                label=name if ax is axes[0] else None,
            )
        ax.set(title=title, xlabel="epoch", yscale="log" if log else "linear")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    fig.legend(loc="center right", fontsize=6, title="block (dark: first)")
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


def _train_value(block: dict[str, float], key: str) -> float:
    if key == "saturated":
        return block["low"] + block["high"]
    if key == "grad_ratio":
        return block["grad_ratio_routing"] / max(block["grad_ratio_experts"], 1e-30)
    return block.get(key, 1.0)  # runs logged before the cap factor was recorded: none known


def routing_table(records: list[dict[str, Any]]) -> str:
    """Markdown: the last evaluated epoch's routing statistics per block."""
    record = last_eval(records)
    lines = [
        f"Routing weights on the validation set, epoch {record['epoch']}:",
        "",
        "| block | mean | spread | spread across examples | < 0.05 | > 0.95 | entropy "
        "| mean per expert |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for b in record["blocks"]:
        experts = " ".join(f"{v:.2f}" for v in b["expert_means"])
        lines.append(
            f"| {b['block']} | {b['mean']:.3f} | {b['std']:.3f} | {b['example_std']:.3f} "
            f"| {b['low']:.1%} | {b['high']:.1%} | {b['entropy']:.3f} | {experts} |"
        )
    samples = [r for r in records if r["phase"] == "train" and r["epoch"] == record["epoch"]]
    if samples:
        lines += ["", *gradient_table(samples)]
    return "\n".join(lines)


def gradient_table(samples: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: per block, over one epoch's training samples, the routers' gradient
    ratio to their experts' before the cap, and how often and how hard the cap bound."""
    lines = [
        f"Routers' gradients in training, epoch {samples[0]['epoch']} "
        f"({len(samples)} samples; ratio = router / expert gradient-to-weight, before any cap):",
        "",
        "| block | ratio, median | ratio, max | cap bound | cap factor, median | cap factor, min |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for i, name in enumerate(b["block"] for b in samples[0]["blocks"]):
        ratios = sorted(_train_value(r["blocks"][i], "grad_ratio") for r in samples)
        factors = sorted(_train_value(r["blocks"][i], "cap_factor") for r in samples)
        bound = sum(f < 1.0 for f in factors) / len(factors)
        lines.append(
            f"| {name} | {ratios[len(ratios) // 2]:.3g} | {ratios[-1]:.3g} | {bound:.0%} "
            f"| {factors[len(factors) // 2]:.3g} | {factors[0]:.3g} |"
        )
    return lines
