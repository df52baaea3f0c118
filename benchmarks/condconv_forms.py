"""Every exact CondConv form on every CondConv layer of paper-condconv, timed at one batch and
input size: which form is fastest per layer, and what `auto` picks there.

    python benchmarks/condconv_forms.py --batch 64 --resolution 20            # the demo's shape
    python benchmarks/condconv_forms.py --batch 64 --resolution 56 --no-grad  # inference

Each layer gets the input it sees in the network (channels_last, as `condnet train` feeds it)
and routing weights in (0, 1); each form of `condnet.models.condconv_forms` that applies is
timed on it (`condnet.timing`, the median of blocks of calls), forward and backward unless
`--no-grad`. The table lists per layer the time of `auto`'s pick, the fastest form and its
time; the totals say what a per-layer choice by measurement would save over `auto`.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from condnet.models import build_model, native  # noqa: E402
from condnet.models import condconv_forms as forms  # noqa: E402
from condnet.models.condconv import CondConv2d  # noqa: E402
from condnet.models.layout import channels_last_weights  # noqa: E402
from condnet.timing import time_call  # noqa: E402


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--resolution", type=int, default=20, help="input side in pixels")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--grad", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--seconds", type=float, default=0.1, help="time budget per form and layer")
    return p.parse_args(argv)


def layer_inputs(batch: int, resolution: int) -> list[tuple[CondConv2d, torch.Tensor]]:
    """Each CondConv layer of paper-condconv with the (channels_last) input it gets."""
    model = channels_last_weights(build_model("paper-condconv"))
    seen: dict[CondConv2d, torch.Tensor] = {}

    def keep(module: CondConv2d, args: tuple) -> None:
        seen.setdefault(module, args[0])

    hooks = [
        m.register_forward_pre_hook(keep) for m in model.modules() if isinstance(m, CondConv2d)
    ]
    with torch.no_grad():
        model.eval()(
            torch.randn(batch, 3, resolution, resolution).contiguous(
                memory_format=torch.channels_last
            )
        )
    for hook in hooks:
        hook.remove()
    return [(m, x.contiguous(memory_format=torch.channels_last)) for m, x in seen.items()]


def run_form(name: str, layer: CondConv2d, x: torch.Tensor, r: torch.Tensor, grad: bool):
    out = forms.FORMS[name](
        x, layer.weight, r, layer.bias, layer.stride, layer.padding, layer.groups
    )
    if grad:
        out.sum().backward()


def time_layer(layer: CondConv2d, x: torch.Tensor, args) -> dict[str, float]:
    """Seconds per call of each form that applies to `layer` on `x`."""
    r = torch.rand(x.shape[0], layer.num_experts, requires_grad=args.grad)
    times = {}
    with torch.set_grad_enabled(args.grad):
        for name in forms.FORMS:
            if forms.applies(name, layer.weight, layer.groups, x):
                call = functools.partial(run_form, name, layer, x, r, args.grad)
                times[name] = time_call(call, min_seconds=args.seconds).median
    return times


def kind(layer: CondConv2d) -> str:
    if layer.kernel_size != (1, 1):
        return "dw"
    return "exp" if layer.out_channels > layer.in_channels else "proj"


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    native.ensure_built()
    cpu = "AVX-512" if torch.backends.cpu.get_cpu_capability() == "AVX512" else "AVX2 or less"
    passes = "forward + backward" if args.grad else "forward"
    print(
        f"batch {args.batch}, {args.resolution} px, {passes}, {args.threads} threads, "
        f"torch {torch.__version__}, CPU capability {cpu}"
    )
    print("| layer | in -> out | map | auto | auto ms | fastest | fastest ms |")
    print("|---|---|---|---|---|---|---|")
    total_auto = total_best = 0.0
    for i, (layer, x) in enumerate(layer_inputs(args.batch, args.resolution)):
        with torch.set_grad_enabled(args.grad):
            picked = layer.choose_form(x)
        times = time_layer(layer, x, args)
        best = min(times, key=times.get)
        total_auto += times[picked]
        total_best += times[best]
        print(
            f"| {i} {kind(layer)} | {layer.in_channels} -> {layer.out_channels} | "
            f"{x.shape[2]}x{x.shape[3]} | {picked} | {1e3 * times[picked]:.2f} | {best} | "
            f"{1e3 * times[best]:.2f} |",
            flush=True,
        )
    print(
        f"\nall CondConv layers: auto {1e3 * total_auto:.1f} ms, fastest per layer "
        f"{1e3 * total_best:.1f} ms ({100 * (1 - total_best / total_auto):.0f} % less)"
    )


if __name__ == "__main__":
    main()
