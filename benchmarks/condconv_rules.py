"""Whole training steps of paper-condconv under candidate rules for CondConv's CPU forms,
against paper-se, interleaved so that a machine's drift hits every candidate alike.

    python benchmarks/condconv_rules.py --batch 64 --resolution 20 --rounds 6   # the demo's shape

A rule maps a layer and its input to a form of `condnet.models.condconv_forms`; each round
times one SGD step (forward, backward, update; `condnet.timing`, median of `--steps`) of SE
and of block C under each rule, in turn. The table gives per rule the median step time over
rounds, its ratio to SE (images/s of C over SE's) and in how many rounds it beat `auto`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import condnet  # noqa: E402
from condnet.models import native  # noqa: E402
from condnet.models.condconv import CondConv2d  # noqa: E402
from condnet.timing import time_call  # noqa: E402

AUTO = CondConv2d._cpu_form


def small_maps_mixture(layer: CondConv2d, x: torch.Tensor) -> str:
    """`auto`, but the experts' outputs summed where `auto` stacks (1x1, at most 16 pixels)."""
    form = AUTO(layer, x)
    return "mixture" if form == "stacked" else form


def matmul_not_rows(layer: CondConv2d, x: torch.Tensor) -> str:
    """`auto`, but the NCHW-view batched product where `auto` takes the channels_last rows."""
    form = AUTO(layer, x)
    return "matmul" if form == "rows" else form


RULES = {
    "auto": AUTO,
    "small maps: mixture": small_maps_mixture,
    "matmul not rows": matmul_not_rows,
}


def step_time(name: str, args) -> float:
    """Median seconds of one SGD step of `name` at the benchmark's batch and size."""
    torch.manual_seed(0)
    model = condnet.channels_last_weights(condnet.build_model(name, num_classes=10)).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch, 3, args.resolution, args.resolution)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,))

    def step():
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return time_call(step, runs=args.steps, warmup=2).median


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--resolution", type=int, default=20)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    native.ensure_built()
    times: dict[str, list[float]] = {"paper-se": [], **{rule: [] for rule in RULES}}
    for _ in range(args.rounds):
        times["paper-se"].append(step_time("paper-se", args))
        for rule, choose in RULES.items():
            CondConv2d._cpu_form = choose
            try:
                times[rule].append(step_time("paper-condconv", args))
            finally:
                CondConv2d._cpu_form = AUTO
    se = statistics.median(times["paper-se"])
    print(
        f"batch {args.batch}, {args.resolution} px, {args.threads} threads, {args.rounds} rounds, "
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    print("| network, rule | step ms (median) | C / SE images/s | rounds faster than auto |")
    print("|---|---|---|---|")
    print(f"| paper-se | {1e3 * se:.0f} | - | - |")
    for rule in RULES:
        median = statistics.median(times[rule])
        wins = sum(t < a for t, a in zip(times[rule], times["auto"], strict=True))
        beat = "-" if rule == "auto" else f"{wins}/{args.rounds}"
        print(f"| paper-condconv, {rule} | {1e3 * median:.0f} | {se / median:.2f}x | {beat} |")


if __name__ == "__main__":
    main()
