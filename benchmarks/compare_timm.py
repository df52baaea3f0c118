"""condnet against timm on the same network, side by side in one process.

    pip install -e '.[bench]'
    python benchmarks/compare_timm.py                       # all three blocks, ~15 min on 2 cores
    python benchmarks/compare_timm.py --blocks se --rounds 3 --json out.json

For each block kind it builds condnet's network and timm's (`timm_reference.py`), checks they
have the same parameter count, and measures three things, alternating condnet and timm
(A B A B ...) for `--rounds` rounds and taking medians, so that the noise of a shared machine
hits both sides alike:

- training images/s: batch 64, forward, cross-entropy, backward, one SGD Nesterov step;
- inference latency at batch 1 (ms) and inference images/s at batch 64.

Like the condnet command, it first makes glibc keep freed memory (`condnet.memory`); that is a
process-wide setting, so timm gets it too. `--default-allocator` measures both without it.

condnet runs as it ships: training with channels_last weights and inputs (the trainer's default
`run.channels_last: true`), inference through `condnet.prepare_inference` (BN folded,
channels_last). timm runs as built by `timm_reference.build_timm` (eager, default layout), and,
with `--timm-channels-last`, with channels_last too. Ratios are condnet / timm for throughput
and condnet / timm for latency (lower is better). Achieved GFLOP/s counts 2 x MACs per image
(x3 for a training step: forward, and backward for inputs and weights) and is shown as a
fraction of this machine's fp32 matrix-multiply rate, measured here with `torch.mm`.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import condnet
from condnet.deploy.inference import channels_last_weights, prepare_inference
from condnet.memory import retain_freed_memory
from condnet.models.complexity import profile
from condnet.paper import NETWORKS
from condnet.timing import time_call
from timm_reference import build_timm

BLOCKS = tuple(NETWORKS.values())
METRICS = ("train", "latency1", "throughput64")
# The targets of the race: condnet/timm at least (throughput) or at most (latency).
TARGETS = {"train": (">=", 1.5), "latency1": ("<=", 0.7), "throughput64": (">=", 1.3)}
VS_SE = {"train": (">=", 0.85), "latency1": ("<=", 1.15), "throughput64": (">=", 0.85)}


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-5
    )


def train_step(model: nn.Module, optimizer, images: Tensor, labels: Tensor) -> None:
    loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def timed(fn: Callable[[], object], iters: int) -> float:
    """Median seconds of `iters` calls (`condnet.timing`)."""
    return time_call(fn, runs=iters, warmup=0).median


class Contender:
    """One side of the race: a network ready to train and to infer, and its timed runs."""

    def __init__(
        self,
        train_model: nn.Module | None,
        infer_model: Callable[[Tensor], Tensor],
        channels_last: bool,
    ) -> None:
        self.train_model, self.infer_model = train_model, infer_model
        self.optimizer = sgd(train_model) if train_model is not None else None
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format

    def inputs(self, batch: int, resolution: int) -> Tensor:
        return torch.randn(batch, 3, resolution, resolution).contiguous(memory_format=self.fmt)

    def run(self, metric: str, resolution: int, iters: int) -> float:
        """One measurement of `metric`: images/s for throughput, milliseconds for latency."""
        if metric == "train":
            if self.train_model is None:
                return math.nan  # an inference-only contender
            self.train_model.train()  # timm's side trains and infers with one module
            images, labels = self.inputs(64, resolution), torch.randint(0, 100, (64,))
            train_step(self.train_model, self.optimizer, images, labels)  # warm-up
            return 64 / timed(
                lambda: train_step(self.train_model, self.optimizer, images, labels), iters
            )
        batch = 1 if metric == "latency1" else 64
        images = self.inputs(batch, resolution)
        if isinstance(self.infer_model, nn.Module):
            self.infer_model.eval()
        with torch.inference_mode():
            self.infer_model(images)  # warm-up
            seconds = timed(lambda: self.infer_model(images), iters * (10 if batch == 1 else 1))
        return seconds * 1e3 if batch == 1 else batch / seconds


def onnx_contender(model: nn.Module, resolution: int, workdir: Path) -> Contender:
    """condnet exported to ONNX (`condnet export`) and run by ONNX Runtime: inference only."""
    from condnet.data.transform_spec import TransformSpec
    from condnet.deploy.bundle import Bundle
    from condnet.deploy.export import OnnxClassifier, export_onnx

    path = workdir / "model.onnx"
    export_onnx(Bundle(model, [str(i) for i in range(100)], TransformSpec(crop=resolution)), path)
    return Contender(None, OnnxClassifier(path), channels_last=False)


def contenders(block: str, args: argparse.Namespace, workdir: Path) -> dict[str, Contender]:
    ours = channels_last_weights(condnet.build_model(f"paper-{block}"))
    theirs = build_timm(block)
    counts = {sum(p.numel() for p in m.parameters()) for m in (ours, theirs)}
    if len(counts) != 1:
        raise SystemExit(f"error: {block}: parameter counts differ (condnet vs timm): {counts}")
    if args.timm_channels_last:
        theirs = theirs.to(memory_format=torch.channels_last)
    sides = {
        "condnet": Contender(ours, prepare_inference(ours).eval(), channels_last=True),
        "timm": Contender(theirs, theirs, channels_last=args.timm_channels_last),
    }
    if args.onnx:
        sides["onnxruntime"] = onnx_contender(ours.eval(), args.resolution, workdir)
    return sides


def race(block: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Medians per side and metric, measured A B A B ... over `args.rounds` rounds."""
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="condnet-race-") as workdir:
        sides = contenders(block, args, Path(workdir))
    samples = {side: {m: [] for m in METRICS} for side in sides}
    for round_ in range(args.rounds):
        for metric in METRICS:
            for side, contender in sides.items():
                samples[side][metric].append(contender.run(metric, args.resolution, args.iters))
        print(f"  {block}: round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    return {side: {m: statistics.median(v) for m, v in by.items()} for side, by in samples.items()}


def matmul_gflops(size: int = 1024, iters: int = 10) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    return 2 * size**3 / timed(lambda: torch.mm(a, b), iters) / 1e9


@functools.cache
def macs_per_image(block: str, resolution: int) -> int:
    return profile(condnet.build_model(f"paper-{block}"), resolution).full_total()["macs"]


def gflops(block: str, metric: str, value: float, resolution: int) -> float:
    macs = macs_per_image(block, resolution)
    images_per_s = 1e3 / value if metric == "latency1" else value
    return 2 * macs * (3 if metric == "train" else 1) * images_per_s / 1e9


def verdict(ratio: float, target: tuple[str, float]) -> str:
    op, bound = target
    met = ratio >= bound if op == ">=" else ratio <= bound
    return f"{op} {bound:<5} {'met' if met else 'NOT met'}"


def report(results: dict[str, dict], rate: float, resolution: int) -> str:
    units = {"train": "train img/s", "latency1": "b1 latency ms", "throughput64": "b64 img/s"}
    header = (
        f"{'block':<10}{'metric':<15}{'condnet':>9}{'timm':>9}{'ratio':>7}  {'target':<16}"
        f"{'GFLOP/s':>8}{'of mm':>7}"
    )
    lines = [header]
    for block, sides in results.items():
        for metric in METRICS:
            ours, theirs = sides["condnet"][metric], sides["timm"][metric]
            ratio = ours / theirs
            achieved = gflops(block, metric, ours, resolution)
            lines.append(
                f"{block:<10}{units[metric]:<15}{ours:>9.1f}{theirs:>9.1f}{ratio:>7.2f}  "
                f"{verdict(ratio, TARGETS[metric]):<16}{achieved:>8.1f}{achieved / rate:>7.1%}"
            )
    if {"se", "condconv"} <= results.keys():
        lines.append("condnet CondConv / condnet SE:")
        for metric in METRICS:
            ratio = results["condconv"]["condnet"][metric] / results["se"]["condnet"][metric]
            lines.append(f"  {units[metric]:<15}{ratio:>7.2f}  {verdict(ratio, VS_SE[metric])}")
    if any("onnxruntime" in sides for sides in results.values()):
        lines.append("condnet exported to ONNX Runtime / timm:")
        for block, sides in results.items():
            for metric in METRICS[1:]:
                ours, theirs = sides["onnxruntime"][metric], sides["timm"][metric]
                lines.append(f"  {block:<10}{units[metric]:<15}{ours:>9.1f}{ours / theirs:>7.2f}")
    lines.append(f"fp32 matrix multiply (torch.mm 1024^2): {rate:.1f} GFLOP/s")
    return "\n".join(lines)


def environment() -> str:
    import timm

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    return (
        f"{time.strftime('%Y-%m-%d')}  {cpu}, {torch.get_num_threads()} threads  "
        f"torch {torch.__version__}  timm {timm.__version__}  condnet {condnet.__version__}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", default=",".join(BLOCKS), help="comma-separated block kinds")
    parser.add_argument("--rounds", type=int, default=5, help="A B rounds per metric (median)")
    parser.add_argument(
        "--iters", type=int, default=3, help="timed calls per round (x10 at batch 1)"
    )
    parser.add_argument("--resolution", type=int, default=56)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--timm-channels-last", action="store_true", help="give timm channels_last too"
    )
    parser.add_argument(
        "--default-allocator",
        action="store_true",
        help="leave glibc's allocator as it is (condnet's CLI retains freed memory)",
    )
    parser.add_argument(
        "--onnx",
        action="store_true",
        help="also time condnet exported to ONNX Runtime (inference only)",
    )
    parser.add_argument("--json", type=Path, help="also write the medians here")
    args = parser.parse_args(argv)
    args.blocks = [b.strip() for b in args.blocks.split(",") if b.strip()]
    bad = [b for b in args.blocks if b not in BLOCKS]
    if bad or args.rounds < 1 or args.iters < 1 or args.resolution < 8:
        parser.error(f"blocks from {', '.join(BLOCKS)}; rounds, iters >= 1; resolution >= 8")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import timm  # noqa: F401
    except ImportError:
        raise SystemExit("error: timm is not installed; pip install -e '.[bench]'") from None
    # A process-wide setting: when applied, it speeds up both sides alike.
    retained = not args.default_allocator and retain_freed_memory()
    header = environment() + f"  allocator: {'retains freed memory' if retained else 'default'}"
    print(header, flush=True)
    rate = matmul_gflops()
    results = {block: race(block, args) for block in args.blocks}
    print(report(results, rate, args.resolution))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "environment": header,
                    "matmul_gflops": rate,
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "results": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
