"""Training speed of the tensor pipeline on one device, per block kind.

Synthetic uint8 images shaped like ImageNet-100 at 64 px (128,000 training and 5,000 validation
images, 100 classes) are put on the device once; then, for each network, the real training loop
runs: `train_one_epoch` over the tensor pipeline's loader (random resized crop 56, flip and
normalisation on the device), with the run's switches (bf16 autocast on CUDA, channels_last,
torch.compile, fused SGD on CUDA). Warm-up steps (compilation, cuDNN autotuning) are timed
apart; then training runs for `--seconds` in chunks of whole steps, and evaluation over the
validation images once. The table gives images/s and the projected wall time of the paper's
55 epochs of 128,000 images with an evaluation of 5,000 after each.

    python benchmarks/gpu_train.py                  # a few minutes on one GPU (mostly compiling)
    python benchmarks/gpu_train.py --images 256 --size 32 --seconds 1 --device cpu
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from condnet.commands.common import (  # noqa: E402
    add_set_option,
    parse_assignments,
    split_set_options,
)
from condnet.config import Config, from_dict  # noqa: E402
from condnet.data.tensor_loader import DeviceSplit  # noqa: E402
from condnet.engine.loaders import eval_loader  # noqa: E402
from condnet.engine.runtime import Runtime, make_runtime  # noqa: E402
from condnet.engine.signals import StopSignals  # noqa: E402
from condnet.engine.trainer import run_epoch, start_run  # noqa: E402
from condnet.models import list_models  # noqa: E402
from condnet.paper import TRAIN_IMAGES as PAPER_TRAIN  # noqa: E402
from condnet.paper import VAL_IMAGES as PAPER_VAL  # noqa: E402


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=PAPER_TRAIN, help="synthetic training images")
    p.add_argument(
        "--val-images",
        type=int,
        help="synthetic validation images (default: 1/25 of --images, at most 5,000)",
    )
    p.add_argument("--size", type=int, default=64, help="stored image side (data.resize)")
    p.add_argument("--crop", type=int, help="training and eval crop (default: 7/8 of --size)")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--batch", type=int, help="training and evaluation batch (256; CPU: 32)")
    p.add_argument("--seconds", type=float, default=10, help="timed training per model")
    p.add_argument("--warmup", type=int, help="steps of the untimed first epoch (15; CPU: 1)")
    p.add_argument(
        "--models", default=",".join(list_models(paper_order=True)), help="comma-separated presets"
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile (default: on CUDA only)",
    )
    p.add_argument("--compile-mode", default="default", help="run.compile_mode")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--epochs", type=int, default=55, help="epochs in the projection")
    add_set_option(p, "train.routing_grad_clip=1 (any config key, every model)")
    args = p.parse_args(split_set_options(sys.argv[1:] if argv is None else argv))
    args.crop = args.crop or args.size * 7 // 8
    return args


def fill_defaults(args: argparse.Namespace, cuda: bool) -> None:
    """Paper-sized on a GPU; on the CPU, small enough to finish in seconds per model."""
    args.compile = cuda if args.compile is None else args.compile
    args.batch = args.batch or (256 if cuda else 32)
    args.warmup = args.warmup or (15 if cuda else 1)
    args.val_images = args.val_images or min(PAPER_VAL, max(args.batch, args.images // 25))


def make_config(args: argparse.Namespace, model: str, compile: bool) -> Config:
    """A run's defaults (routing monitor, router settings, ...) with the benchmark's sizes and
    switches, then `--set`."""
    return from_dict(
        {
            "model": {"name": model},
            "data": {"pipeline": "tensor", "resize": args.size, "crop": args.crop},
            "train": {"batch_size": args.batch, "eval_batch_size": args.batch},
            "run": {"device": args.device, "compile": compile, "compile_mode": args.compile_mode},
        },
        parse_assignments(args.set),
    )


def synthetic(count: int, size: int, classes: int, device: torch.device, seed: int) -> DeviceSplit:
    """Uniform-noise uint8 images with random labels, made on the device."""
    generator = torch.Generator(device).manual_seed(seed)
    images = torch.randint(
        0, 256, (count, size, size, 3), generator=generator, device=device, dtype=torch.uint8
    )
    labels = torch.randint(0, classes, (count,), generator=generator, device=device)
    return DeviceSplit(images, torch.full((count, 2), size, device=device), labels)


def chunk(data: DeviceSplit, start: int, count: int) -> DeviceSplit:
    """Images start .. start + count (wrapping around), as views where possible."""
    start %= len(data)
    if start + count <= len(data):
        window = slice(start, start + count)
        return DeviceSplit(data.images[window], data.sizes[window], data.labels[window])
    index = torch.arange(start, start + count, device=data.images.device) % len(data)
    return DeviceSplit(data.images[index], data.sizes[index], data.labels[index])


def graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def measure(args, name: str, train_data: DeviceSplit, val_data: DeviceSplit) -> dict:
    cfg = make_config(args, name, args.compile)
    rt = make_runtime(cfg.run)
    torch._dynamo.reset()  # each model compiles from scratch, inside its own warm-up time
    if rt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(rt.device)
    ctx = start_run(cfg, rt, args.classes)
    warm_train = chunk(train_data, 0, args.warmup * args.batch)
    with StopSignals() as ctx.stop:
        started = time.perf_counter()
        run_epoch(ctx, 0, warm_train, eval_loader(cfg, chunk(val_data, 0, args.batch), rt))
        warmup, compiled = time.perf_counter() - started, graphs()
        epochs, train_seconds, eval_seconds = [], 0.0, 0.0
        started = time.perf_counter()
        while not epochs or time.perf_counter() - started < args.seconds:
            record, _ = run_epoch(ctx, len(epochs) + 1, train_data, eval_loader(cfg, val_data, rt))
            epochs.append(record)
            spent = record["train_images"] / record["images_per_second"]
            train_seconds += spent
            eval_seconds += record["epoch_seconds"] - spent
    train_rate = sum(r["train_images"] for r in epochs) / train_seconds
    eval_rate = sum(r["val_images"] for r in epochs) / eval_seconds
    return {
        "model": name,
        "params": sum(p.numel() for p in ctx.model.parameters()),
        "warmup_s": warmup,
        "train_images_per_s": train_rate,
        "eval_images_per_s": eval_rate,
        "projected_minutes": args.epochs * (PAPER_TRAIN / train_rate + PAPER_VAL / eval_rate) / 60,
        "timed_epochs": len(epochs),
        "final_loss": epochs[-1]["train_loss"],
        "routing": ctx.monitor is not None,
        "recompiles": graphs() - compiled if cfg.run.compile else None,
        "peak_gib": torch.cuda.max_memory_allocated(rt.device) / 2**30
        if rt.device.type == "cuda"
        else None,
    }


def header(args, rt: Runtime) -> str:
    device = torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda" else "CPU"
    return (
        f"{datetime.date.today()}  {device}  torch {torch.__version__}  "
        f"{'bf16 autocast' if rt.amp else 'fp32'}, channels_last, "
        f"compile {args.compile_mode if args.compile else 'off'}, batch {args.batch}, "
        f"{args.crop} px crops of {args.size} px, {args.images:,} synthetic images "
        f"(projection: {args.epochs} epochs of {PAPER_TRAIN:,} + {PAPER_VAL:,} evaluated)"
    )


def table(rows: list[dict]) -> str:
    lines = [
        "| model | params | warm-up s | timed epochs | train img/s | eval img/s | "
        f"{rows[0]['epochs']} epochs | recompiles | peak GiB |",
        "|---" * 9 + "|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params']:,} | {r['warmup_s']:.1f} | {r['timed_epochs']} | "
            f"{r['train_images_per_s']:,.0f} | {r['eval_images_per_s']:,.0f} | "
            f"{r['projected_minutes']:.1f} min | {_or_dash(r['recompiles'], '{}')} | "
            f"{_or_dash(r['peak_gib'], '{:.1f}')} |"
        )
    return "\n".join(lines)


def _or_dash(value, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse(argv)
    rt = make_runtime(from_dict({"run": {"device": args.device}}).run)
    fill_defaults(args, rt.device.type == "cuda")
    print(header(args, rt), flush=True)
    train_data = synthetic(args.images, args.size, args.classes, rt.device, 0)
    val_data = synthetic(args.val_images, args.size, args.classes, rt.device, 1)
    rows = []
    for name in args.models.split(","):
        rows.append({**measure(args, name, train_data, val_data), "epochs": args.epochs})
        print(f"{name}: {rows[-1]['train_images_per_s']:,.0f} training images/s", flush=True)
    print(table(rows))
    print("target: the 55 epochs in at most 10 min, at least 12,000 training images/s")
    return rows


if __name__ == "__main__":
    main()
