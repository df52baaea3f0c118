"""`report.md` with Table 3, Figure 5, Table 4 per block and what produced them."""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path
from typing import Any

import torch
import yaml

from condnet.config import Config
from condnet.engine.runtime import device_name
from condnet.models import StageSpec, list_models
from condnet.models.complexity import KIND_TITLES, profile
from condnet.report.plots import plot_curves
from condnet.report.runs import Run, find_runs


def duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return (
        f"{hours} h {minutes} min"
        if hours
        else f"{minutes} min {secs} s"
        if minutes
        else f"{secs} s"
    )


def _macs(run: Run) -> int:
    return profile(run.model, run.config.data.crop).full_total()["macs"]


def table3(runs: list[Run]) -> list[dict[str, Any]]:
    return [run.summary() | {"macs": _macs(run), "crop": run.config.data.crop} for run in runs]


def table3_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| block | epochs | precision | device | training time | images/s | best top-1 (epoch) "
        "| best top-5 | final top-1 | final top-5 | parameters | MACs / image | paper: time "
        "| paper: top-1 |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        paper = r["paper"]
        paper_cells = (
            (f"{paper['hours']:g} h", f"{paper['top1']:.2f}") if paper else ("not reported",) * 2
        )
        lines.append(
            f"| {r['model']} | {r['epochs']} | {r['precision']} | {r['device']} "
            f"| {duration(r['train_seconds'])} | {r['images_per_second']:.0f} "
            f"| {r['best_top1']:.2f} ({r['best_epoch']}) | {r['best_top5']:.2f} "
            f"| {r['final_top1']:.2f} | {r['final_top5']:.2f} | {r['params']:,} | {r['macs']:,} "
            f"| {paper_cells[0]} | {paper_cells[1]} |"
        )
    return "\n".join(lines)


def config_setting(config: Config, key: str, default: Any = None) -> Any:
    section, _, name = key.partition(".")
    value = getattr(config, section)
    if section == "model":
        return value.overrides.get(name.removeprefix("overrides."), default)
    return getattr(value, name)


def _paper(keys: tuple[str, ...]) -> dict[str, Any]:
    """The paper's value of each key: the config's default."""
    return {k: config_setting(Config(), k) for k in keys}


# The paper's recipe in the settings a miniature run shrinks.
PAPER_SCALE = _paper(
    (
        "data.crop",
        "data.resize",
        "data.scale",
        "data.train_subset",
        "train.epochs",
        "train.warmup_epochs",
        "train.batch_size",
        "train.lr_start",
        "train.lr_peak",
        "train.lr_final",
        "train.lr_per_step",
    )
)
# Block C trained exactly as the paper states it: independent experts, routers at the full
# rate with no cap or schedule of their own (README, Training block C).
PAPER_ROUTING = {
    "train.routing_lr_scale": 1.0,
    "train.routing_grad_clip": 0.0,
    "train.expert_init": "independent",
    "train.routing_lr_auto": False,
    "train.routing_warmup_epochs": 0.0,
    "train.routing_temperature": 1.0,
    "model.overrides.routing_activation": StageSpec(channels=1, repeats=1).routing_activation,
}


def table3_notes(runs: list[Run]) -> list[str]:
    """What makes these runs differ from the paper's: scale, evaluation set, block C's routing."""
    config, notes = runs[0].config, []
    changed = [
        f"{k.split('.')[1]} {config_setting(config, k)}"
        for k, v in PAPER_SCALE.items()
        if config_setting(config, k) != v
    ]
    if config.data.source not in ("imagefolder", "imagenet64") or changed:
        notes.append(
            f"A miniature of the paper's recipe ({config.data.source}; "
            f"{', '.join(changed) or 'same scale'}): its figures are not comparable to the paper's."
        )
    subset = config.train.epoch_eval_subset
    if subset:
        final = runs[0].metrics[-1].get("val_images", "all")
        notes.append(
            "Per-epoch top-1 (Figure 5 and 'best') is measured on a fixed class-balanced subset "
            f"of {subset} validation images; the final top-1 and top-5 on the whole validation set "
            f"({final} images)."
        )
    autocast = [run.name for run in runs if "bf16" in str(run.metrics[-1].get("precision", ""))]
    if autocast:
        notes.append(
            f"{', '.join(autocast)} trained under bf16 autocast (run.amp on CUDA); the paper does "
            "not state its precision."
        )
    for run in runs:
        if run.name != "paper-condconv":
            continue
        departs = [
            f"{k.split('.')[-1]}={config_setting(run.config, k, v)}"
            for k, v in PAPER_ROUTING.items()
            if config_setting(run.config, k, v) != v
        ]
        if run.config.train.routing_temperature != 1.0:
            departs.append(f"routing_anneal_epochs={run.config.train.routing_anneal_epochs:g}")
        if departs:
            notes.append(
                f"{run.name} trains block C unlike the paper's text: {', '.join(departs)} "
                "(see the README's section on training block C)."
            )
        if run.config.train.routing_init != "small":
            notes.append(
                f"{run.name} initialises its routers as the CondConv reference code does "
                f"(routing_init={run.config.train.routing_init}); the paper states none."
            )
    return notes


def table3_text(rows: list[dict[str, Any]]) -> str:
    """The summary printed at the end of `condnet reproduce` (and `make demo`)."""
    head = (
        f"{'block':<16}{'precision':<15}{'time':>14}{'img/s':>8}{'best top-1':>12}"
        f"{'final top-1':>13}{'final top-5':>13}"
    )
    lines = ["Table 3 (this run)", head]
    for r in rows:
        lines.append(
            f"{r['model']:<16}{r['precision']:<15}{duration(r['train_seconds']):>14}"
            f"{r['images_per_second']:>8.0f}{r['best_top1']:>12.2f}"
            f"{r['final_top1']:>13.2f}{r['final_top5']:>13.2f}"
        )
    return "\n".join(lines)


def table4_markdown(run: Run) -> str:
    prof = profile(run.model, run.config.data.crop, run.name).to_dict()
    c, h, w = prof["input_size"]
    lines = [
        f"### {run.name} (input {c}x{h}x{w}, {run.model.num_classes} classes)",
        "",
        "| operation | repeat | MACs | filter coefficients |",
        "|---|---:|---:|---:|",
    ]
    for row in prof["rows"]:
        note = "" if row["in_paper_total"] else " (not in paper total)"
        lines.append(
            f"| {row['name']}{note} | {row['repeat']} | {row['macs']:,} | {row['coefficients']:,} |"
        )
    total = prof["paper_total"]
    lines += [
        f"| **paper total** | | **{total['macs']:,}** | **{total['coefficients']:,}** |",
        "",
        "| complete account | MACs | parameters |",
        "|---|---:|---:|",
    ]
    for kind, t in prof["by_kind"].items():
        if t["macs"] or t["params"]:
            lines.append(f"| {KIND_TITLES[kind]} | {t['macs']:,} | {t['params']:,} |")
    full = prof["full_total"]
    lines.append(f"| **total** | **{full['macs']:,}** | **{full['params']:,}** |")
    return "\n".join(lines + [""] + [f"- {note}" for note in prof["notes"]])


def _git_commit() -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown (not a git checkout)"


def _device() -> str:
    if torch.cuda.is_available():
        return device_name(torch.device("cuda", 0))
    return f"{device_name(torch.device('cpu'))}, {torch.get_num_threads()} threads"


def _training(run: Run) -> str:
    """Precision and device as recorded per epoch, and the settings changed on resume."""
    text = f"{run.recorded('precision')} on {run.recorded('device')}"
    for resume in run.resumes:
        changes = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in resume["changes"].items())
        text += f"; from epoch {resume['epoch']}: {changes}"
    return text


def provenance(runs: list[Run]) -> str:
    first = runs[0]
    config = first.config.to_dict()
    config["model"]["name"] = "<per block: " + ", ".join(r.name for r in runs) + ">"
    lines = [
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- device (report): {_device()}",
        *[f"- training of {run.name}: {_training(run)}" for run in runs],
        f"- versions (training): condnet {first.versions.get('condnet', '?')}, "
        f"torch {first.versions.get('torch', '?')}",
        f"- git commit: {_git_commit()}",
        f"- seed: {first.config.run.seed}",
        "",
        "Configuration (the same for every block):",
        "",
        "```yaml",
        yaml.safe_dump(config, sort_keys=False).strip(),
        "```",
    ]
    return "\n".join(lines)


def build_report(
    root: str | Path, names: list[str] | None = None
) -> tuple[Path, list[dict[str, Any]]]:
    """Write `root/report.md` and `root/figure5.png` from the runs in `root/<name>` (by
    default the paper's networks)."""
    root = Path(root)
    runs = find_runs(root, names or list_models(paper_order=True))
    plot_curves(runs, root / "figure5.png")
    rows = table3(runs)
    unfinished = [r.name for r in runs if not r.finished]
    parts = [
        "# condnet reproduction report",
        "",
        f"Runs in `{root}`: {', '.join(r.name for r in runs)}."
        + (f" Unfinished: {', '.join(unfinished)}." if unfinished else ""),
        "",
        "## Table 3: training time and accuracy",
        "",
        table3_markdown(rows),
        "",
        "Training time is the sum of the epochs' wall-clock time (training and per-epoch "
        "evaluation); images/s is the training throughput averaged over epochs. Paper figures "
        "are for ImageNet-100 at 56x56 on one GPU; the paper did not report the "
        "SE + CondConv block.",
        "",
        *[f"- {note}" for note in table3_notes(runs)],
        "",
        "## Figure 5: per-epoch accuracy and loss",
        "",
        "![Figure 5](figure5.png)",
        "",
        "## Table 4: complexity per block",
        "",
        "Counted from the trained networks with forward hooks at the training crop size.",
        "",
        *[table4_markdown(run) + "\n" for run in runs],
        "## What produced this report",
        "",
        provenance(runs),
        "",
    ]
    path = root / "report.md"
    path.write_text("\n".join(parts))
    return path, rows
