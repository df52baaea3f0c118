"""Where the time goes: a profile by operator of one measurement of `compare_timm.py`.

    python benchmarks/profile_ops.py --block condconv --metric throughput64
    python benchmarks/profile_ops.py --block se --metric train --side timm --top 12

It builds the side as `compare_timm.py` runs it (condnet: channels_last, `prepare_inference` for
inference; timm: as built), runs the measurement once untimed and `--iters` times under
`torch.profiler`, and prints the operators with the most self CPU time per call of the
measurement (the sum over the timed iterations divided by their number).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

import condnet  # noqa: E402
from compare_timm import METRICS, Contender, environment, sgd, train_step  # noqa: E402
from condnet.deploy.inference import channels_last_weights, prepare_inference  # noqa: E402
from condnet.memory import retain_freed_memory  # noqa: E402
from condnet.paper import NETWORKS  # noqa: E402


def side(block: str, name: str) -> Contender:
    if name == "timm":
        from timm_reference import build_timm

        model = build_timm(block)
        return Contender(model, model, channels_last=False)
    model = channels_last_weights(condnet.build_model(f"paper-{block}"))
    return Contender(model, prepare_inference(model).eval(), channels_last=True)


def measurement(contender: Contender, metric: str, resolution: int):
    """The call that `compare_timm.py` times for `metric`, ready to repeat."""
    if metric == "train":
        model = contender.train_model.train()
        optimizer = sgd(model)
        images, labels = contender.inputs(64, resolution), torch.randint(0, 100, (64,))
        return lambda: train_step(model, optimizer, images, labels)
    images = contender.inputs(1 if metric == "latency1" else 64, resolution)
    contender.infer_model.eval()

    def infer():
        with torch.inference_mode():
            contender.infer_model(images)

    return infer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--block", choices=tuple(NETWORKS.values()), default="condconv")
    parser.add_argument("--metric", choices=METRICS, default="throughput64")
    parser.add_argument("--side", choices=("condnet", "timm"), default="condnet")
    parser.add_argument("--iters", type=int, default=3, help="profiled calls")
    parser.add_argument("--top", type=int, default=10, help="operators shown")
    parser.add_argument("--resolution", type=int, default=56)
    args = parser.parse_args(argv)
    retain_freed_memory()
    torch.manual_seed(0)
    run = measurement(side(args.block, args.side), args.metric, args.resolution)
    run()  # warm-up (and, for CondConv, the compiled kernel's build)
    with profile() as prof:
        for _ in range(args.iters):
            run()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) / args.iters / 1e3
    print(environment())
    print(f"{args.side} {args.block} {args.metric}: {total:.1f} ms of self CPU time per call")
    print(f"{'operator':<44}{'ms/call':>9}{'share':>8}{'calls':>7}")
    for event in events[: args.top]:
        ms = event.self_cpu_time_total / args.iters / 1e3
        calls = event.count // args.iters
        print(f"{event.key[:43]:<44}{ms:>9.1f}{ms / total:>8.1%}{calls:>7}")


if __name__ == "__main__":
    main()
