"""Figure 5: validation top-1 and training loss per epoch, one labelled curve per block."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402

from condnet.report.runs import Run  # noqa: E402


def _images_per_epoch(runs: list[Run]) -> int | None:
    """Training images per epoch when every run saw the same number (older runs did not log it)."""
    counts = {r.get("train_images") for run in runs for r in run.metrics}
    return counts.pop() if len(counts) == 1 and None not in counts else None


def plot_curves(runs: list[Run], path: Path) -> Path:
    """Write the two-panel figure to `path` (PNG)."""
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    for run in runs:
        epochs = [r["epoch"] for r in run.metrics]
        acc.plot(epochs, [r["val_top1"] for r in run.metrics], marker="o", ms=3, label=run.name)
        loss.plot(epochs, [r["train_loss"] for r in run.metrics], marker="o", ms=3, label=run.name)
    acc.set(title="Validation top-1 accuracy", xlabel="epoch", ylabel="top-1 (%)")
    loss.set(title="Training loss", xlabel="epoch", ylabel="cross-entropy loss")
    per_epoch = _images_per_epoch(runs)
    for ax in (acc, loss):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
        if per_epoch:
            top = ax.secondary_xaxis(
                "top", functions=(lambda e: e * per_epoch / 1000, lambda k: k * 1000 / per_epoch)
            )
            top.set_xlabel("training images seen (thousands)")
    fig.suptitle("Figure 5: per-epoch accuracy and loss curves")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
