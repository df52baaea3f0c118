"""Reading finished runs: metrics, checkpoint facts, and the Table 3 summary per block."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from condnet.config import Config, load_config
from condnet.engine.checkpoint import load_checkpoint, model_from_checkpoint
from condnet.engine.metrics import read_metrics
from condnet.errors import CondnetError
from condnet.models import CondNet
from condnet.paper import TABLE3


@dataclass
class Run:
    """One finished (or partly finished) training run in `folder`."""

    name: str
    folder: Path
    config: Config
    metrics: list[dict[str, Any]]
    model: CondNet
    versions: dict[str, str]
    resumes: list[dict[str, Any]] = field(default_factory=list)  # settings changed on resume

    @property
    def finished(self) -> bool:
        return len(self.metrics) >= self.config.train.epochs

    def recorded(self, key: str) -> str:
        """What the epochs recorded under `key` (``precision``, ``device``), each value once in
        order of first use; "unknown" for epochs of runs from before it was recorded."""
        return ", then ".join(dict.fromkeys(str(r.get(key, "unknown")) for r in self.metrics))

    def summary(self) -> dict[str, Any]:
        """Table 3 row: time, speed, best and final accuracy, size."""
        m = self.metrics
        best = max(m, key=lambda r: r["val_top1"])
        return {
            "model": self.name,
            "epochs": len(m),
            "train_seconds": sum(r["epoch_seconds"] for r in m),
            "images_per_second": sum(r["images_per_second"] for r in m) / len(m),
            "best_top1": best["val_top1"],
            "best_top5": best["val_top5"],
            "best_epoch": best["epoch"],
            "final_top1": m[-1]["val_top1"],
            "final_top5": m[-1]["val_top5"],
            "params": sum(p.numel() for p in self.model.parameters()),
            "precision": self.recorded("precision"),
            "device": self.recorded("device"),
            "paper": TABLE3.get(self.name),
        }


def read_run(folder: Path) -> Run:
    state = load_checkpoint(folder / "last.pt")
    metrics = read_metrics(folder)
    if not metrics:
        raise CondnetError(f"{folder}: no metrics.jsonl; not a finished run")
    config = load_config(folder / "config.yaml")
    versions, resumes = state.get("versions", {}), state.get("resumes", [])
    return Run(
        config.model.name, folder, config, metrics, model_from_checkpoint(state), versions, resumes
    )


def find_runs(root: Path, names: list[str]) -> list[Run]:
    """The runs `root/<name>` that have a checkpoint, in `names` order."""
    runs = [read_run(root / n) for n in names if (root / n / "last.pt").is_file()]
    if not runs:
        raise CondnetError(
            f"{root}: no finished runs (expected {', '.join(f'{n}/last.pt' for n in names)})"
        )
    return runs
