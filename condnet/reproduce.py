"""`condnet reproduce`: the three blocks, same recipe, data and seed, then the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from condnet.config import load_config
from condnet.engine.checkpoint import load_checkpoint
from condnet.engine.trainer import resume_config, train
from condnet.report.build import MODELS, build_report


def run_state(folder: Path, epochs: int) -> str:
    """'finished', 'partial' (resumable) or 'new'."""
    if not (folder / "last.pt").is_file():
        return "new"
    done = load_checkpoint(folder / "last.pt")["epoch"] + 1
    return "finished" if done >= epochs else "partial"


def reproduce(config: str | Path | None, out: str | Path, overrides: dict[str, Any] | None = None,
              models: list[str] = MODELS, progress: bool | None = None) -> tuple[Path, list[dict]]:  # fmt: skip
    """Train every model not yet finished in `out/<model>` (resuming a partial one), then report."""
    out = Path(out)
    for name in models:
        cfg = load_config(config, {**(overrides or {}), "model.name": name})
        folder = out / name
        state = run_state(folder, cfg.train.epochs)
        print(f"== {name}: {'already finished, skipped' if state == 'finished' else state + ' run'}", flush=True)
        if state == "new":
            train(cfg, folder, progress=progress)
        elif state == "partial":
            train(resume_config(folder), folder, resume=True, progress=progress)
    return build_report(out, models)
