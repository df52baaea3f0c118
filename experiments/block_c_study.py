"""Does block C's routing learn, and does it pay? Candidates against SE over paired seeds.

Every candidate trains with the same data, recipe and seeds as SE (block B), at one of three
settings; only the routers' settings differ:

- ``demo``: `configs/demo.yaml` as shipped (the rate set every step, one warm-up epoch);
- ``paper-shape``: the demo's data and size with the paper's schedule shape: the rate set once
  per epoch, a warm-up of three epochs from lr_start to lr_peak, then a half-cosine (8 epochs);
- ``compressed``: the paper configs (`configs/paper-*.yaml`) compressed to two epochs of 12,000
  Fashion-MNIST images at 20x20, the rate set every step (the earlier routing study's setting).

Per candidate the table gives the final top-1 (mean +- sd, min-max, n), the paired difference
to SE with a 95 % t-interval and the seeds it wins, and, from `routing.jsonl` at the last
epoch, the routing weights' spread across examples (median over blocks, and the last block)
and the fraction saturated (< 0.05 or > 0.95, mean over blocks, and the largest block's).

    python experiments/block_c_study.py --setting demo --seeds 0-4 --only se,lr-0.1,lr-0.3 \\
        --jobs 2 --table experiments/block-c/demo-seeds.md --keep experiments/block-c/runs

A finished run is not trained again; an unfinished one resumes. `--jobs 2` runs two at a time,
one thread each: on 2 cores of an AMD EPYC a demo epoch of block C took about 57 s that way,
against 39 s for one run alone on both cores, so a pair finishes sooner. The commands behind
every table are in docs/training-block-c.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import yaml
from routing_study import compression  # experiments/routing_study.py, beside this script
from scipy import stats

from condnet.engine.metrics import read_metrics
from condnet.engine.routing_log import read_routing
from condnet.engine.runtime import device_name

ROOT = Path(__file__).resolve().parents[1]

NO_CAP = {"train.routing_grad_clip": 0.0}
REFERENCE = {"train.routing_init": "reference"}
SOFTMAX = {"model.overrides.routing_activation": "softmax"}
SHARED = {"train.expert_init": "shared"}

# Every CondConv candidate starts from the paper's text and changes what it names, whatever the
# config file's own routing settings.
PAPER_TEXT = {
    "train.routing_grad_clip": 0.0,
    "train.routing_lr_scale": 1.0,
    "train.routing_init": "small",
    "train.expert_init": "independent",
}

# name -> (block, routing settings, what it tests).
CANDIDATES: dict[str, tuple[str, dict[str, object], str]] = {
    "se": ("se", {}, "Block B, the bar to reach"),
    "standard": ("standard", {}, "Block A, for reference"),
    "cap-1": ("condconv", {"train.routing_grad_clip": 1.0}, "small init, cap 1 (the old default)"),
    "nocap": (
        "condconv",
        NO_CAP,
        "the paper's text (configs/paper-condconv-exact.yaml): small init, independent experts, "
        "no cap",
    ),
    "ref-cap-1": (
        "condconv",
        REFERENCE | {"train.routing_grad_clip": 1.0},
        "reference init, cap 1",
    ),
    "ref-cap-10": (
        "condconv",
        REFERENCE | {"train.routing_grad_clip": 10.0},
        "reference init, cap 10 (binds on spikes only)",
    ),
    "ref-nocap": ("condconv", REFERENCE | NO_CAP, "reference init, no cap"),
    "lr-0.1": (
        "condconv",
        NO_CAP | {"train.routing_lr_scale": 0.1},
        "routers at 0.1 x the rate (the paper configs' default)",
    ),
    "lr-0.3": (
        "condconv",
        NO_CAP | {"train.routing_lr_scale": 0.3},
        "routers at 0.3 x the rate (configs/demo.yaml's default)",
    ),
    "shared-lr-0.1": (
        "condconv",
        SHARED | NO_CAP | {"train.routing_lr_scale": 0.1},
        "experts start equal, routers at 0.1 x the rate",
    ),
    "shared-lr-0.3": (
        "condconv",
        SHARED | NO_CAP | {"train.routing_lr_scale": 0.3},
        "experts start equal, routers at 0.3 x the rate",
    ),
    "ref-lr-0.1": (
        "condconv",
        REFERENCE | NO_CAP | {"train.routing_lr_scale": 0.1},
        "reference init, routers at 0.1 x the rate",
    ),
    "dyconv": (
        "condconv",
        REFERENCE | NO_CAP | SOFTMAX | {"train.routing_temperature": 30.0},
        "Dynamic Convolution: softmax, temperature 30 -> 1 per step over 10 epochs (all but "
        "the last in a shorter run), reference init, no cap",
    ),
    "last-stages": (
        "condconv",
        {"model.overrides.block": ["se"] * 4 + ["condconv"] * 2, "train.routing_grad_clip": 1.0},
        "CondConv in the last two stages only (block B before), as EfficientNet-CondConv; cap 1",
    ),
    "shared-ref-lr-0.1": (
        "condconv",
        SHARED | REFERENCE | NO_CAP | {"train.routing_lr_scale": 0.1},
        "experts start equal, reference init, routers at 0.1 x the rate",
    ),
    "shared-ref-nocap": (
        "condconv",
        SHARED | REFERENCE | NO_CAP,
        "experts start equal, reference init, no cap",
    ),
    "shared-ref-cap-1": (
        "condconv",
        SHARED | REFERENCE | {"train.routing_grad_clip": 1.0},
        "experts start equal, reference init, cap 1",
    ),
    "ref-warmup": (
        "condconv",
        REFERENCE | NO_CAP | {"train.routing_warmup_epochs": 2.0},
        "reference init, routers' rate ramps from 0 over 2 epochs",
    ),
}

# The compressed recipe of the earlier routing study (routing_study.py), used with the paper
# configs: its data and schedule keys, not its seed or diagnostics settings.
COMPRESSED = {
    k: v
    for k, v in compression(epochs=2, subset=12000, seed=0).items()
    if k.startswith("data.") or k in ("train.epochs", "train.warmup_epochs", "train.lr_per_step")
}
PAPER_SHAPE = {"train.epochs": 8, "train.warmup_epochs": 3, "train.lr_per_step": False}
SETTINGS = {  # name -> (config file with {block} for the block, overrides, description)
    "demo": ("configs/demo.yaml", {}, "configs/demo.yaml as shipped"),
    "paper-shape": (
        "configs/demo.yaml",
        PAPER_SHAPE,
        "configs/demo.yaml, 8 epochs, the rate set per epoch, 3 warm-up epochs",
    ),
    "compressed": (
        "configs/paper-{block}.yaml",
        COMPRESSED,
        "configs/paper-{block}.yaml, 12,000 Fashion-MNIST images at 20x20, 2 epochs, per step",
    ),
}


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' or '0-4'."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds += list(range(int(lo), int(hi or lo) + 1))
    return seeds


def command(setting: str, name: str, seed: int, out: Path, threads: int) -> list[str]:
    block, routing, _ = CANDIDATES[name]
    config, overrides, _ = SETTINGS[setting]
    routing = (PAPER_TEXT | routing) if block == "condconv" else routing
    overrides = overrides | routing | {"run.seed": seed, "run.threads": threads}
    if "train.routing_temperature" in routing:  # annealed as Dynamic Convolution does
        overrides["train.routing_anneal_epochs"] = float(min(10, epochs_of(setting) - 1))
    if "{block}" not in config:
        overrides["model.name"] = f"paper-{block}"
    assignments = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    base = [sys.executable, "-m", "condnet.cli", "train"]
    if (out / "last.pt").exists():
        return base + ["--resume", str(out), "--set", *assignments]
    config = str(ROOT / config.format(block=block))
    return base + ["--config", config, "--out", str(out), "--set", *assignments]


def epochs_of(setting: str) -> int:
    config, overrides, _ = SETTINGS[setting]
    if "train.epochs" in overrides:
        return int(overrides["train.epochs"])
    return int(yaml.safe_load((ROOT / config.format(block="se")).read_text())["train"]["epochs"])


def finished(folder: Path, epochs: int) -> bool:
    return (folder / "metrics.jsonl").exists() and len(read_metrics(folder)) >= epochs


def run_one(setting: str, name: str, seed: int, out: Path, threads: int) -> None:
    log = out.parent / f"{out.name}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    with log.open("a") as f:
        cmd = command(setting, name, seed, out, threads)
        print(f"== {name} seed {seed}: {' '.join(cmd[3:])}", file=f, flush=True)
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, check=False)
    print(f"{name} seed {seed}: exit {done.returncode} ({log})", flush=True)


def routing_summary(folder: Path) -> dict[str, float]:
    vals = [r for r in read_routing(folder) if r["phase"] == "val"]
    if not vals:
        return {}
    blocks = vals[-1]["blocks"]
    spreads = [b["example_std"] for b in blocks]
    saturated = [b["low"] + b["high"] for b in blocks]
    return {
        "spread_median": statistics.median(spreads),
        "spread_last": spreads[-1],
        "saturated_mean": statistics.fmean(saturated),
        "saturated_max": max(saturated),
    }


def summarise(folder: Path) -> dict[str, float]:
    metrics = read_metrics(folder)
    return {
        "top1": metrics[-1]["val_top1"],
        "img_s": statistics.median(m["images_per_second"] for m in metrics),
    } | routing_summary(folder)


def paired(diffs: list[float]) -> tuple[float, float, float]:
    """Mean of paired differences with its 95 % t-interval (nan-wide for n < 2)."""
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, float("nan"), float("nan")
    low, high = stats.t.interval(
        0.95, len(diffs) - 1, loc=mean, scale=stats.sem(diffs) if max(diffs) > min(diffs) else 0
    )
    return mean, float(low), float(high)


def table(runs: dict[str, dict[int, dict[str, float]]], header: str) -> str:
    lines = [
        header,
        "",
        "| candidate | setting | n | final top-1 (mean +- sd) | min-max | vs SE: mean diff "
        "[95 % CI] | wins | spread, median block | spread, last block | saturated, mean "
        "(max block) | img/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    se = runs.get("se", {})
    for name, by_seed in runs.items():
        tops = [r["top1"] for r in by_seed.values()]
        sd = statistics.stdev(tops) if len(tops) > 1 else 0.0
        cells = [
            name,
            CANDIDATES[name][2],
            str(len(tops)),
            f"{statistics.fmean(tops):.2f} +- {sd:.2f}",
        ]
        cells.append(f"{min(tops):.2f}-{max(tops):.2f}")
        common = sorted(set(by_seed) & set(se))
        if name != "se" and common:
            diffs = [by_seed[s]["top1"] - se[s]["top1"] for s in common]
            mean, low, high = paired(diffs)
            cells += [
                f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]" if len(diffs) > 1 else f"{mean:+.2f}",
                f"{sum(d > 0 for d in diffs)}/{len(diffs)}",
            ]
        else:
            cells += ["", ""]
        routed = [r for r in by_seed.values() if "spread_median" in r]
        if routed:
            cells += [
                f"{statistics.fmean(r['spread_median'] for r in routed):.3f} "
                f"(min {min(r['spread_median'] for r in routed):.3f})",
                f"{statistics.fmean(r['spread_last'] for r in routed):.3f}",
                f"{statistics.fmean(r['saturated_mean'] for r in routed):.1%} "
                f"({max(r['saturated_max'] for r in routed):.1%})",
            ]
        else:
            cells += ["", "", ""]
        cells.append(f"{statistics.median(r['img_s'] for r in by_seed.values()):.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Per seed (final top-1; spread median over blocks):")
    lines.append("")
    for name, by_seed in runs.items():
        cells = [
            f"{s}: {r['top1']:.2f}"
            + (f" ({r['spread_median']:.3f})" if "spread_median" in r else "")
            for s, r in sorted(by_seed.items())
        ]
        lines.append(f"- {name}: " + ", ".join(cells))
    return "\n".join(lines)


def figure(runs: dict[str, dict[int, dict[str, float]]], path: Path, title: str) -> None:
    """Each CondConv candidate's routing spread (median block) against its paired difference
    to SE, averaged over the seeds both have."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    se = runs.get("se", {})
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120, layout="constrained")
    for name, by_seed in runs.items():
        common = [s for s in by_seed if s in se and "spread_median" in by_seed[s]]
        if not common:
            continue
        spread = statistics.fmean(by_seed[s]["spread_median"] for s in common)
        diff = statistics.fmean(by_seed[s]["top1"] - se[s]["top1"] for s in common)
        ax.scatter(spread, diff, color="tab:blue")
        ax.annotate(
            f"{name} (n={len(common)})",
            (spread, diff),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.axhline(0, color="gray", lw=0.8)
    ax.axvline(0.05, color="gray", lw=0.8, ls="--")
    ax.set(
        xlabel="routing spread across examples (median block, last epoch)",
        ylabel="final top-1 minus SE's (points, paired seeds)",
        title=title,
    )
    ax.title.set_fontsize(9)
    fig.savefig(path)
    plt.close(fig)


def keep(folder: Path, kept: Path) -> None:
    """Copy a run's evidence (config, metrics, routing on the validation set) into `kept`."""
    kept.mkdir(parents=True, exist_ok=True)
    for name in ("config.yaml", "metrics.jsonl"):
        shutil.copyfile(folder / name, kept / name)
    records = [r for r in read_routing(folder) if r["phase"] == "val"]
    if records and not any(r["phase"] == "train" for r in read_routing(kept)):  # kept whole
        (kept / "routing.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--setting", choices=list(SETTINGS), default="demo")
    parser.add_argument("--out", type=Path, default=ROOT / "runs/block-c")
    parser.add_argument("--only", help="comma-separated candidates (default: all)")
    parser.add_argument("--seeds", default="0", help="'0,1,2' or '0-4'")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--table", type=Path, help="also write the table to this markdown file")
    parser.add_argument("--no-train", action="store_true", help="only tabulate finished runs")
    parser.add_argument("--figure", type=Path, help="draw spread against accuracy here (PNG)")
    parser.add_argument(
        "--keep",
        type=Path,
        help="copy each tabulated run's config, metrics and validation routing records here",
    )
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        parser.error(f"unknown candidates {unknown}; choose from {', '.join(CANDIDATES)}")
    seeds, epochs = parse_seeds(args.seeds), epochs_of(args.setting)
    root = args.out / args.setting
    threads = 1 if args.jobs > 1 else torch.get_num_threads()
    todo = [(n, s) for s in seeds for n in names if not finished(root / n / f"seed-{s}", epochs)]
    if not args.no_train:
        with ThreadPoolExecutor(args.jobs) as pool:
            for n, s in todo:
                pool.submit(run_one, args.setting, n, s, root / n / f"seed-{s}", threads)
    runs = {
        n: {
            s: summarise(root / n / f"seed-{s}")
            for s in seeds
            if finished(root / n / f"seed-{s}", epochs)
        }
        for n in CANDIDATES
        if (root / n).exists() and (not args.only or n in names)
    }
    runs = {n: r for n, r in runs.items() if r}
    if args.keep:
        for name, by_seed in runs.items():
            for seed in by_seed:
                keep(root / name / f"seed-{seed}", args.keep / args.setting / name / f"seed-{seed}")
    threads = sorted(
        {
            yaml.safe_load((root / n / f"seed-{seed}" / "config.yaml").read_text())["run"][
                "threads"
            ]
            for n, by_seed in runs.items()
            for seed in by_seed
        }
    )
    header = (
        f"Setting `{args.setting}`: {SETTINGS[args.setting][2]}; seeds {args.seeds}; "
        f"torch {torch.__version__}, {'/'.join(map(str, threads))} thread(s) per run "
        f"({args.jobs if not args.no_train else 'up to 2'} at a time), "
        f"{device_name(torch.device('cpu'))}."
    )
    text = table(runs, header)
    print(text)
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(text + "\n")
    if args.figure:
        figure(runs, args.figure, f"Block C against SE, setting {args.setting}, seeds {args.seeds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
