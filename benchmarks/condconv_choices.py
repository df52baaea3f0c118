"""The measurements behind three choices in CondConv and the SE branch (batch 64, 2 threads).

    python benchmarks/condconv_choices.py          # about two minutes on 2 cores

1. Inference mixes 1x1 kernels a chunk of the batch at a time (`MIXING_CACHE_FLOATS`), training
   in one product: both, whole and chunked, forward alone and forward with backward, at the
   1x1 shapes of paper-condconv where the kernels are large against the maps.
2. The folded bias inside the product (`baddbmm`) or added after it (`bmm` then `add_`), over
   the whole inference network.
3. The SE pool as `mean` or as a sum divided by the pixel count, forward with backward.

Each figure is the minimum of `--repeats` calls (the whole network: the median of 6 calls,
the two forms interleaved).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import condnet  # noqa: E402
from compare_timm import environment  # noqa: E402
from condnet.memory import retain_freed_memory  # noqa: E402
from condnet.models import condconv_forms as forms  # noqa: E402
from condnet.timing import time_call  # noqa: E402

BATCH, EXPERTS = 64, 4
# (in, out, size) of paper-condconv's 1x1 layers with the largest kernels against their maps.
POINTWISE = ((160, 640, 7), (640, 160, 7), (640, 320, 7), (80, 320, 14), (320, 80, 14))


def fastest(fn, repeats: int) -> float:
    """Milliseconds of the fastest of `repeats` calls after one untimed (`condnet.timing`)."""
    return time_call(fn, runs=repeats).fastest * 1e3


def products(rows, routing, experts, shape, chunk: int):
    """The per-example 1x1 products, the kernels mixed `chunk` examples at a time (without
    autograd into one output, as CondConv2d does; with it, joined by `cat`)."""
    grad = torch.is_grad_enabled()
    out = None if grad else rows.new_empty(BATCH, rows.shape[1], shape[1])
    outs = []
    for start in range(0, BATCH, chunk):
        part = slice(start, start + chunk)
        kernels = (routing[part] @ experts).reshape(-1, *shape)
        outs.append(torch.bmm(rows[part], kernels, out=None if grad else out[part]))
    return out if not grad else outs[0] if len(outs) == 1 else torch.cat(outs)


def time_chunks(cin: int, cout: int, size: int, repeats: int) -> list[str]:
    """'forward | forward+backward' ms of the products, whole and in chunks of 8 and 16."""
    rows = torch.randn(BATCH, size * size, cin, requires_grad=True)
    routing = torch.rand(BATCH, EXPERTS, requires_grad=True)
    experts = torch.randn(EXPERTS, cin * cout, requires_grad=True)
    grad = torch.randn(BATCH, size * size, cout)
    cells = []
    for chunk in (BATCH, 8, 16):

        def run(chunk=chunk):
            return products(rows, routing, experts, (cin, cout), chunk)

        with torch.no_grad():
            forward = fastest(run, repeats)
        both = fastest(lambda run=run: run().backward(grad), repeats)
        cells.append(f"{forward:5.1f} | {both:5.1f}")
    return cells


def chunking(repeats: int) -> None:
    print("1x1 products, ms            whole          chunk 8        chunk 16   (fwd | fwd+bwd)")
    for cin, cout, size in POINTWISE:
        cells = time_chunks(cin, cout, size, repeats)
        print(f"  {cin:>4} -> {cout:<4} at {size:>2}x{size:<2}   " + "   ".join(cells))


def bias_placement() -> None:
    model = condnet.prepare_inference(
        condnet.channels_last_weights(condnet.build_model("paper-condconv"))
    )
    images = torch.randn(BATCH, 3, 56, 56).contiguous(memory_format=torch.channels_last)
    inside = forms.rows_times_kernels

    def after(pixels, routing, experts, bias, out=None):
        kernels = (routing @ experts).reshape(pixels.shape[0], pixels.shape[2], -1)
        product = torch.bmm(pixels, kernels, out=out)
        return product if bias is None else product.add_(bias)

    times = {"baddbmm (kept)": [], "bmm then add_": []}
    with torch.inference_mode():
        for _ in range(6):
            for name, form in zip(times, (inside, after), strict=True):
                forms.rows_times_kernels = form
                times[name].append(fastest(lambda: model(images), 1))
    forms.rows_times_kernels = inside
    for name, values in times.items():
        print(f"whole network, bias {name:<16} {statistics.median(values):6.1f} ms")


def pooling(repeats: int) -> None:
    x0 = torch.randn(BATCH, 96, 56, 56).contiguous(memory_format=torch.channels_last)
    fc1, fc2 = torch.nn.Linear(96, 24), torch.nn.Linear(24, 96)
    grad = torch.randn_like(x0)
    pools = {
        "mean": lambda x: x.mean((2, 3)),
        "sum / pixels (kept)": lambda x: x.sum((2, 3)) / (x.shape[2] * x.shape[3]),
    }
    for name, pool in pools.items():

        def branch(pool=pool):
            x = x0.detach().requires_grad_()
            scale = torch.sigmoid(fc2(torch.relu(fc1(pool(x)))))
            (x * scale[:, :, None, None]).backward(grad)

        print(f"SE branch at 96 x 56 x 56, pool {name:<20} {fastest(branch, repeats):6.1f} ms")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    retain_freed_memory()
    torch.manual_seed(0)
    print(environment())
    chunking(args.repeats)
    bias_placement()
    pooling(args.repeats)


if __name__ == "__main__":
    main()
