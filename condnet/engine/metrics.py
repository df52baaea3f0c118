"""Per-epoch metrics: top-k accuracy, and the log files (JSON lines, CSV, TensorBoard)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch

FIELDS = (
    "epoch",
    "lr",
    "train_loss",
    "val_loss",
    "val_top1",
    "val_top5",
    "epoch_seconds",
    "images_per_second",
    "skipped_images",
    "train_images",
    "val_images",
)


def correct_topk(
    logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)
) -> torch.Tensor:
    """Number of examples whose label is among the top k logits, for each k (no host sync)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return torch.stack([hits[:, :k].any(1).sum() for k in ks])


class MetricsLog:
    """Appends one record per epoch to metrics.jsonl and metrics.csv (and to TensorBoard when
    it is installed)."""

    def __init__(self, out: Path) -> None:
        self.jsonl, self.csv = out / "metrics.jsonl", out / "metrics.csv"
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))
        except ImportError:  # tensorboard is optional
            self.tb = None

    def append(self, record: dict[str, Any]) -> None:
        with self.jsonl.open("a") as f:
            f.write(json.dumps(record) + "\n")
        new = not self.csv.exists()
        with self.csv.open("a", newline="") as f:
            writer = csv.DictWriter(f, FIELDS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(record)
        if self.tb is not None:
            for key in FIELDS[1:]:
                self.tb.add_scalar(key, record[key], record["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(out: Path) -> list[dict[str, Any]]:
    """The run's records, one per epoch, epochs counted from 1 (files written before condnet
    counted from 1 start at 0: read as if they did)."""
    path = out / "metrics.jsonl"
    records = (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if path.exists()
        else []
    )
    return from_one(records)


def from_one(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`records` with their epochs counted from 1: shifted by one when the first is epoch 0
    (a file or checkpoint from before condnet counted from 1)."""
    if records and min(r["epoch"] for r in records) == 0:
        return [{**r, "epoch": r["epoch"] + 1} for r in records]
    return records


def truncate_metrics(out: Path, epochs: int) -> None:
    """Keep the records of the first `epochs` epochs (a resumed run rewrites what came after
    its checkpoint); an old file is rewritten counting from 1."""
    records = [r for r in read_metrics(out) if r["epoch"] <= epochs]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with (out / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
