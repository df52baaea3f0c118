"""Which routing setting lets Block C (SE + CondConv) train under the paper's recipe?

Every candidate trains with the same data, seed and recipe: the paper's config for its block,
compressed to a CPU-sized run on Fashion-MNIST (12,000 training images at 20x20, two epochs:
one of linear warm-up to the paper's 0.2 at batch 256, one of half-cosine down to 0.0002,
the rate set every step; the full 10,000-image test set after every epoch). Only the routing
settings differ. Each run keeps `routing.jsonl` (the routing diagnostics) in its folder; the
table gathers the final accuracy and what the diagnostics saw.

    python experiments/routing_study.py --out runs/routing-study            # all candidates
    python experiments/routing_study.py --out runs/routing-study --only se,paper

A finished candidate is not trained again; the table is rewritten from every run with at least
one evaluated epoch (the `epochs` column says how many).
`--epochs`, `--subset` and `--seed` change the compression (the table names them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from statistics import mean

import torch

from condnet.engine.metrics import read_metrics
from condnet.engine.routing_log import read_routing
from condnet.engine.runtime import device_name

ROOT = Path(__file__).resolve().parents[1]

CONDCONV = "paper-condconv"
SOFTMAX = {"model.overrides.routing_activation": "softmax"}
ANNEAL = {"train.routing_temperature": 30.0, "train.routing_anneal_epochs": 1.0}
AUTO = {"train.routing_lr_auto": True}


def rate(scale: float) -> dict[str, object]:
    """The routers' rate multiplier, with condnet's default gradient cap off."""
    return {"train.routing_lr_scale": scale, "train.routing_grad_clip": 0.0}


# name -> (config, routing settings, what it tests); every CondConv candidate names its rate
# and its gradient cap.
CANDIDATES: dict[str, tuple[str, dict[str, object], str]] = {
    "standard": ("paper-standard", {}, "Block A, for reference"),
    "se": ("paper-se", {}, "Block B, the bar to reach"),
    "paper": (CONDCONV, rate(1.0), "the paper exactly: sigmoid, routers at the full rate"),
    "lr-0.1": (CONDCONV, rate(0.1), "routers at 0.1 x the rate"),
    "lr-0.03": (CONDCONV, rate(0.03), "routers at 0.03 x the rate"),
    "lr-0.01": (CONDCONV, rate(0.01), "routers at 0.01 x the rate"),
    "lr-0.003": (CONDCONV, rate(0.003), "routers at 0.003 x the rate"),
    "lr-0": (CONDCONV, rate(0.0), "routers frozen at their initial weights (about 0.5 each)"),
    "router-warmup": (
        CONDCONV,
        rate(1.0) | {"train.routing_warmup_epochs": 1.0},
        "routers' rate ramps from 0 over the warm-up",
    ),
    "sigmoid-T30": (CONDCONV, rate(1.0) | ANNEAL, "sigmoid, temperature 30 -> 1 over the warm-up"),
    "softmax": (CONDCONV, rate(1.0) | SOFTMAX, "softmax routing, temperature 1"),
    "softmax-T30": (
        CONDCONV,
        rate(1.0) | SOFTMAX | ANNEAL,
        "softmax, temperature 30 -> 1 over the warm-up (Dynamic Convolution)",
    ),
    "auto": (
        CONDCONV,
        rate(1.0) | AUTO,
        "each router's rate matched to its experts' (measured at the first step)",
    ),
    "clip-1": (
        CONDCONV,
        rate(1.0) | {"train.routing_grad_clip": 1.0},
        "each step, each router's gradient/weight capped at its experts'",
    ),
    "clip-3": (
        CONDCONV,
        rate(1.0) | {"train.routing_grad_clip": 3.0},
        "each step, each router's gradient/weight capped at 3 x its experts'",
    ),
    "auto-softmax": (CONDCONV, rate(1.0) | AUTO | SOFTMAX, "softmax routing, rates as in auto"),
    "lr-0.01-softmax-T30": (
        CONDCONV,
        rate(0.01) | SOFTMAX | ANNEAL,
        "softmax, temperature 30 -> 1, routers at 0.01 x the rate",
    ),
}


def compression(epochs: int, subset: int, seed: int) -> dict[str, object]:
    """The paper's recipe shrunk to a CPU-sized run (only size changes)."""
    return {
        "data.source": "fashion-mnist",
        "data.root": None,
        "data.train_subset": subset,
        "data.resize": 20,
        "data.crop": 20,
        "data.scale": [0.7, 1.0],
        "data.mean": [0.286] * 3,
        "data.std": [0.353] * 3,
        "data.num_workers": 0,
        "train.epochs": epochs,
        "train.warmup_epochs": max(epochs // 2, 1),
        "train.lr_per_step": True,
        "train.eval_batch_size": 1000,
        "run.seed": seed,
        "run.routing_stats_every": 2,
    }


def train(name: str, out: Path, settings: dict[str, object]) -> None:
    config, routing, _ = CANDIDATES[name]
    assignments = [f"{k}={json.dumps(v)}" for k, v in (settings | routing).items()]
    command = [sys.executable, "-m", "condnet.cli", "train"]
    if (out / "last.pt").exists():
        command += ["--resume", str(out)]
    else:
        config_file = str(ROOT / f"configs/{config}.yaml")
        command += ["--config", config_file, "--out", str(out), "--set", *assignments]
    print(f"== {name}: {' '.join(assignments[-4:])}", flush=True)
    subprocess.run(command, check=True)


def finished(folder: Path, epochs: int) -> bool:
    metrics = folder / "metrics.jsonl"
    return metrics.exists() and len(metrics.read_text().splitlines()) >= epochs


def summarise(folder: Path) -> dict[str, object]:
    metrics = read_metrics(folder)
    train_side = [r for r in read_routing(folder) if r["phase"] == "train"]
    row: dict[str, object] = {
        "epochs": len(metrics),
        "final_top1": metrics[-1]["val_top1"],
        "best_top1": max(m["val_top1"] for m in metrics),
        "val_loss": [m["val_loss"] for m in metrics],
        "seconds": sum(m["epoch_seconds"] for m in metrics),
    }
    if not train_side:
        return row
    blocks = [b for r in train_side for b in r["blocks"]]
    first = train_side[0]["blocks"]
    final = [r for r in read_routing(folder) if r["phase"] == "val"][-1]["blocks"]
    return row | {
        "saturated": max(b["low"] + b["high"] for b in blocks),
        "kernel_norm_min": min(b["kernel_norm_min"] for b in blocks),
        "bn_var_max": max(b["bn_var_max"] for b in blocks),
        "grad_ratio_start": mean(
            [b["grad_ratio_routing"] / b["grad_ratio_experts"] for b in first]
        ),
        "final_entropy": mean([b["entropy"] for b in final]),
        "final_example_std": mean([b["example_std"] for b in final]),
        "first_saturated": _first(train_side, lambda b: b["low"] + b["high"] > 0.1),
        "first_kernel_off": _first(
            train_side, lambda b: b["kernel_norm_min"] < 0.1 or b["kernel_norm_mean"] > 2
        ),
        "first_bn_var_10": _first(train_side, lambda b: b["bn_var_max"] > 10),
    }


def _first(samples: list[dict[str, object]], bad) -> str:
    """'epoch.step' of the first training sample where some block is `bad`, else '-'."""
    for r in samples:
        if any(bad(b) for b in r["blocks"]):
            return f"{r['epoch']}.{r['step']}"
    return "-"


COLUMNS = (  # (heading, key, format)
    ("most saturated", "saturated", ".0%"),
    ("min mixed-kernel norm", "kernel_norm_min", ".3g"),
    ("max BN running var", "bn_var_max", ".3g"),
    ("router/expert grad ratio at step 0", "grad_ratio_start", ".3g"),
    ("final entropy", "final_entropy", ".3f"),
    ("final spread across examples", "final_example_std", ".3g"),
    ("first saturated", "first_saturated", "s"),
    ("first kernel off", "first_kernel_off", "s"),
    ("first BN var > 10", "first_bn_var_10", "s"),
)


def table(rows: dict[str, dict[str, object]], header: str) -> str:
    headings = ["candidate", "setting", "epochs", "final top-1", "best top-1", "val loss per epoch"]
    headings += [c[0] for c in COLUMNS]
    lines = [header, "", "| " + " | ".join(headings) + " |", "|---|---|" + "---:|" * 13]
    for name, r in rows.items():
        cells = [name, CANDIDATES[name][2], str(r["epochs"])]
        cells += [f"{r['final_top1']:.2f}", f"{r['best_top1']:.2f}"]
        cells.append(" / ".join(f"{v:.3g}" for v in r["val_loss"]))
        cells += [format(r[key], fmt) if key in r else "" for _, key, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs/routing-study")
    parser.add_argument("--only", help="comma-separated candidates (default: all)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--subset", type=int, default=12000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--table", type=Path, help="also write the table to this markdown file")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        parser.error(f"unknown candidates {unknown}; choose from {', '.join(CANDIDATES)}")
    settings = compression(args.epochs, args.subset, args.seed)
    for name in names:
        if not finished(args.out / name, args.epochs):
            train(name, args.out / name, settings)
    # Runs stopped early (a diverged candidate need not finish) are listed with their epochs.
    rows = {n: summarise(args.out / n) for n in CANDIDATES if finished(args.out / n, 1)}
    header = (
        f"Fashion-MNIST, {args.subset} training images at 20x20, {args.epochs} epochs, batch 256, "
        f"seed {args.seed}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{device_name(torch.device('cpu'))}."
    )
    text = table(rows, header)
    print(text)
    if args.table:
        args.table.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
