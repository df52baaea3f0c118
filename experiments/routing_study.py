"""Which routing setting lets Block C (SE + CondConv) train under the paper's recipe?

Every candidate trains with the same data, seed and recipe: the paper's config for its block,
compressed to a CPU-sized run on Fashion-MNIST (12,000 training images at 20x20, two epochs:
one of linear warm-up to the paper's 0.2 at batch 256, one of half-cosine down to 0.0002,
the rate set every step; the full 10,000-image test set after every epoch). Only the routing
settings differ. Each run keeps `routing.jsonl` (the routing diagnostics) in its folder; the
table gathers the final accuracy and what the diagnostics saw.

    python experiments/routing_study.py --out runs/routing-study            # all candidates
    python experiments/routing_study.py --out runs/routing-study --only se,paper

A finished candidate is not trained again; the table is rewritten from every finished run.
`--epochs`, `--subset` and `--seed` change the compression (the table names them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from condnet.report.build import _device as device_description

ROOT = Path(__file__).resolve().parents[1]

# name -> (config, routing overrides, what it tests)
CANDIDATES: dict[str, tuple[str, dict[str, object], str]] = {
    "standard": ("paper-standard", {}, "Block A, for reference"),
    "se": ("paper-se", {}, "Block B, the bar to reach"),
    "paper": ("paper-condconv", {"train.routing_lr_scale": 1.0}, "the paper exactly: sigmoid, routers at the full rate"),
    "lr-0.1": ("paper-condconv", {"train.routing_lr_scale": 0.1}, "routers at 0.1 x the rate"),
    "lr-0.03": ("paper-condconv", {"train.routing_lr_scale": 0.03}, "routers at 0.03 x the rate"),
    "lr-0.01": ("paper-condconv", {"train.routing_lr_scale": 0.01}, "routers at 0.01 x the rate"),
    "lr-0.003": ("paper-condconv", {"train.routing_lr_scale": 0.003}, "routers at 0.003 x the rate"),
    "lr-0": ("paper-condconv", {"train.routing_lr_scale": 0.0},
             "routers frozen at their initial weights (about 0.5 each): no input-dependent routing"),
    "router-warmup": ("paper-condconv", {"train.routing_lr_scale": 1.0, "train.routing_warmup_epochs": 1.0},
                      "routers' rate ramps from 0 over the warm-up"),
    "sigmoid-T30": ("paper-condconv", {"train.routing_lr_scale": 1.0, "train.routing_temperature": 30.0,
                                       "train.routing_anneal_epochs": 1.0},
                    "sigmoid, temperature 30 -> 1 over the warm-up"),
    "softmax": ("paper-condconv", {"train.routing_lr_scale": 1.0, "model.overrides.routing_activation": "softmax"},
                "softmax routing, temperature 1"),
    "softmax-T30": ("paper-condconv", {"train.routing_lr_scale": 1.0, "model.overrides.routing_activation": "softmax",
                                       "train.routing_temperature": 30.0, "train.routing_anneal_epochs": 1.0},
                    "softmax, temperature 30 -> 1 over the warm-up (Dynamic Convolution)"),
    "auto": ("paper-condconv", {"train.routing_lr_scale": 1.0, "train.routing_lr_auto": True},
             "each router's rate matched to its experts' (measured at the first step)"),
    "auto-softmax": ("paper-condconv", {"train.routing_lr_scale": 1.0, "train.routing_lr_auto": True,
                                        "model.overrides.routing_activation": "softmax"},
                     "softmax routing, rates matched as in auto"),
    "lr-0.01-softmax-T30": ("paper-condconv", {"train.routing_lr_scale": 0.01, "model.overrides.routing_activation": "softmax",
                                               "train.routing_temperature": 30.0, "train.routing_anneal_epochs": 1.0},
                            "softmax, temperature 30 -> 1, routers at 0.01 x the rate"),
}  # fmt: skip


def compression(epochs: int, subset: int, seed: int) -> dict[str, object]:
    return {
        "data.source": "fashion-mnist", "data.root": None, "data.train_subset": subset,
        "data.resize": 20, "data.crop": 20, "data.scale": [0.7, 1.0],
        "data.mean": [0.286] * 3, "data.std": [0.353] * 3, "data.num_workers": 0,
        "train.epochs": epochs, "train.warmup_epochs": max(epochs // 2, 1), "train.lr_per_step": True,
        "train.eval_batch_size": 1000, "run.seed": seed, "run.routing_stats_every": 2,
    }  # fmt: skip


def train(name: str, out: Path, settings: dict[str, object]) -> None:
    config, routing, _ = CANDIDATES[name]
    assignments = [f"{k}={json.dumps(v)}" for k, v in (settings | routing).items()]
    command = [sys.executable, "-m", "condnet.cli", "train", "--config", str(ROOT / f"configs/{config}.yaml"),
               "--out", str(out), "--set", *assignments]  # fmt: skip
    if (out / "last.pt").exists():
        command.append("--resume")
    print(f"== {name}: {' '.join(assignments[-4:])}", flush=True)
    subprocess.run(command, check=True)


def finished(folder: Path, epochs: int) -> bool:
    metrics = folder / "metrics.jsonl"
    return metrics.exists() and len(metrics.read_text().splitlines()) >= epochs


def summarise(folder: Path) -> dict[str, object]:
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    routing = [json.loads(line) for line in (folder / "routing.jsonl").read_text().splitlines()] if (
        folder / "routing.jsonl").exists() else []  # fmt: skip
    row: dict[str, object] = {
        "final_top1": metrics[-1]["val_top1"], "best_top1": max(m["val_top1"] for m in metrics),
        "val_loss": [m["val_loss"] for m in metrics], "epochs": len(metrics),
        "seconds": sum(m["epoch_seconds"] for m in metrics),
    }  # fmt: skip
    train_side = [r for r in routing if r["phase"] == "train"]
    if train_side:
        blocks = [b for r in train_side for b in r["blocks"]]
        row["saturated"] = max(b["low"] + b["high"] for b in blocks)
        row["kernel_norm_min"] = min(b["kernel_norm_min"] for b in blocks)
        row["bn_var_max"] = max(b["bn_var_max"] for b in blocks)
        row["first_saturated"] = _first(train_side, lambda b: b["low"] + b["high"] > 0.1)
        row["first_kernel_off"] = _first(
            train_side, lambda b: b["kernel_norm_min"] < 0.1 or b["kernel_norm_mean"] > 2
        )
        row["first_bn_var_10"] = _first(train_side, lambda b: b["bn_var_max"] > 10)
        first = train_side[0]["blocks"]
        row["grad_ratio_start"] = sum(
            b["grad_ratio_routing"] / b["grad_ratio_experts"] for b in first
        ) / len(first)
        final_val = [r for r in routing if r["phase"] == "val"][-1]["blocks"]
        row["final_entropy"] = sum(b["entropy"] for b in final_val) / len(final_val)
        row["final_example_std"] = sum(b["example_std"] for b in final_val) / len(final_val)
    return row


def _first(samples: list[dict[str, object]], bad) -> str:
    """'epoch.step' of the first training sample where some block is `bad`, else '-'."""
    for r in samples:
        if any(bad(b) for b in r["blocks"]):
            return f"{r['epoch']}.{r['step']}"
    return "-"


def table(rows: dict[str, dict[str, object]], header: str) -> str:
    lines = [header, "",
             "| candidate | setting | final top-1 | best top-1 | val loss per epoch | most saturated "
             "| min mixed-kernel norm | max BN running var | router/expert grad ratio at step 0 "
             "| final entropy | final spread across examples | first saturated | first kernel off | first BN var > 10 |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, r in rows.items():

        def cell(key: str, fmt: str) -> str:
            return format(r[key], fmt) if key in r else ""

        losses = " / ".join(f"{v:.3g}" for v in r["val_loss"])
        lines.append(f"| {name} | {CANDIDATES[name][2]} | {r['final_top1']:.2f} | {r['best_top1']:.2f} | {losses} "
                     f"| {cell('saturated', '.0%')} | {cell('kernel_norm_min', '.3g')} | {cell('bn_var_max', '.3g')} "
                     f"| {cell('grad_ratio_start', '.3g')} | {cell('final_entropy', '.3f')} "
                     f"| {cell('final_example_std', '.3g')} | {cell('first_saturated', 's')} "
                     f"| {cell('first_kernel_off', 's')} | {cell('first_bn_var_10', 's')} |")  # fmt: skip
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
    rows = {n: summarise(args.out / n) for n in CANDIDATES if finished(args.out / n, args.epochs)}
    cpu = device_description()
    header = (f"Fashion-MNIST, {args.subset} training images at 20x20, {args.epochs} epochs, batch 256, seed "
              f"{args.seed}; torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}.")  # fmt: skip
    text = table(rows, header)
    print(text)
    if args.table:
        args.table.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
