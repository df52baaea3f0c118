"""`condnet reproduce`: the three blocks, same recipe, data and seed, then the report.

With `jobs > 1` the blocks train side by side, each in a `condnet train` process of its own
with its share of the CPU threads (on a small CPU that beats one run after another with all
threads each: small convolutions scale poorly over threads; measured in the README's demo
section); their output lines are prefixed with the block's name. The config is shared: each
block's run gets the model overrides its blocks use (`num_experts` reaches paper-condconv alone).
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from condnet.config import Config, from_dict, merge_overrides, read_config_file
from condnet.engine.checkpoint import load_checkpoint
from condnet.engine.trainer import resume_config, train
from condnet.errors import CondnetError
from condnet.models import list_models
from condnet.models.presets import drop_unused_overrides
from condnet.report.build import build_report


def run_state(folder: Path, epochs: int) -> str:
    """'finished', 'partial' (resumable) or 'new'."""
    if not (folder / "last.pt").is_file():
        return "new"
    done = load_checkpoint(folder / "last.pt")["epoch"]
    return "finished" if done >= epochs else "partial"


def reproduce(
    config: str | Path | None,
    out: str | Path,
    overrides: dict[str, Any] | None = None,
    *,
    models: list[str] | None = None,
    progress: bool | None = None,
    jobs: int = 1,
) -> tuple[Path, list[dict]]:
    """Train every model not yet finished in `out/<model>` (resuming a partial one), then report.

    `models`: by default the paper's networks."""
    out, models = Path(out), models or list_models(paper_order=True)
    data, todo = read_config_file(config), []
    for name in models:
        cfg = block_config(data, overrides or {}, name)
        state = run_state(out / name, cfg.train.epochs)
        print(
            f"== {name}: {'already finished, skipped' if state == 'finished' else state + ' run'}",
            flush=True,
        )
        if state != "finished":
            todo.append((cfg, out / name, state == "partial"))
    if jobs > 1 and len(todo) > 1:
        _train_side_by_side(todo, out, jobs)
    for cfg, folder, resume in todo if jobs <= 1 or len(todo) <= 1 else []:
        train(resume_config(folder) if resume else cfg, folder, resume=resume, progress=progress)
    return build_report(out, models)


def block_config(data: Any, overrides: dict[str, Any], name: str) -> Config:
    """The shared config (file `data` and dotted `overrides`) for model `name`, less the model
    overrides that its blocks do not use."""
    merged = merge_overrides(data, {**overrides, "model.name": name})
    model = merged.get("model")
    if isinstance(model, dict) and isinstance(model.get("overrides"), dict):
        model["overrides"] = drop_unused_overrides(name, model["overrides"])
    return from_dict(merged)


def _train_side_by_side(todo: list[tuple[Config, Path, bool]], out: Path, jobs: int) -> None:
    """Each run in a `condnet train` process, `jobs` at a time, the CPU threads shared out."""
    out.mkdir(parents=True, exist_ok=True)
    threads = max(1, len(os.sched_getaffinity(0)) // min(jobs, len(todo)))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        codes = list(pool.map(lambda run: _train_process(*run, out, threads), todo))
    failed = [
        f"{cfg.model.name} (exit status {code})"
        for (cfg, _, _), code in zip(todo, codes, strict=True)
        if code
    ]
    if failed:
        raise CondnetError(f"training failed: {', '.join(failed)}; run reproduce again to resume")


def _train_process(cfg: Config, folder: Path, resume: bool, out: Path, threads: int) -> int:
    """`condnet train` for one block; its output lines prefixed with the block's name."""
    command = [sys.executable, "-m", "condnet.cli", "train"]
    config = out / f".{cfg.model.name}.config.yaml"
    if resume:
        command += ["--resume", str(folder)]
    else:
        cfg.run.threads = cfg.run.threads or threads
        cfg.save(config)
        command += ["--config", str(config), "--out", str(folder)]
    try:
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc:
            for line in proc.stdout:
                print(f"[{cfg.model.name}] {line}", end="", flush=True)
        return proc.returncode
    finally:
        config.unlink(missing_ok=True)
