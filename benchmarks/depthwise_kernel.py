"""CondConv's per-example depthwise convolution: the compiled kernel against the grouped form.

    python benchmarks/depthwise_kernel.py            # about a minute on 2 cores

For each depthwise layer shape of paper-condconv at 56 px (batch 64, channels_last, float32)
it times, as the minimum of `--repeats` calls: the portable form (one grouped convolution with
the batch folded into the groups, its input made NCHW first), condnet's compiled kernel
(`condnet.models.native`), and oneDNN's plain depthwise convolution with one kernel for the
whole batch (what an SE block runs), forward alone and forward with backward.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_timm import environment  # noqa: E402
from condnet.memory import retain_freed_memory  # noqa: E402
from condnet.models import native  # noqa: E402
from condnet.timing import time_call  # noqa: E402

# (channels, size, stride) of paper-condconv's depthwise layers at 56 px, one of each kind.
SHAPES = ((64, 56, 1), (96, 56, 2), (160, 28, 1), (320, 14, 1), (640, 7, 1))


def fastest(fn, repeats: int) -> float:
    """Milliseconds of the fastest of `repeats` calls after one untimed (`condnet.timing`)."""
    return time_call(fn, runs=repeats).fastest * 1e3


def grouped(x, kernels, stride):
    batch, channels, size, _ = x.shape
    weight = kernels.permute(0, 3, 1, 2).reshape(batch * channels, 1, 3, 3)
    folded = x.reshape(1, batch * channels, size, size)
    out = F.conv2d(folded, weight, None, stride, 1, groups=batch * channels)
    return out.reshape(batch, channels, *out.shape[2:])


def forms(channels: int, stride: int):
    plain = torch.randn(channels, 1, 3, 3).contiguous(memory_format=torch.channels_last)

    def one_kernel(x, kernels):
        weight = plain.requires_grad_(kernels.requires_grad)
        return F.conv2d(x, weight, None, stride, 1, 1, channels)

    return {
        "grouped": lambda x, k: grouped(x, k, stride),
        "compiled": lambda x, k: native.per_example_depthwise(x, k, None, stride, 1),
        "oneDNN plain": one_kernel,
    }


def time_form(form, x, kernels, repeats: int) -> tuple[float, float]:
    """Milliseconds of the forward pass alone, and of forward and backward."""
    with torch.no_grad():
        forward = fastest(lambda: form(x, kernels), repeats)
    x, kernels = x.clone().requires_grad_(), kernels.clone().requires_grad_()
    return forward, fastest(lambda: form(x, kernels).sum().backward(), repeats)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    if not native.ensure_built():
        raise SystemExit(f"error: no compiled kernel here: {native.why_not()}")
    retain_freed_memory()
    print(environment())
    print(f"{'layer':<22}{'form':<14}{'forward ms':>11}{'fwd+bwd ms':>11}")
    for channels, size, stride in SHAPES:
        x = torch.randn(args.batch, channels, size, size)
        x = x.contiguous(memory_format=torch.channels_last)
        kernels = torch.randn(args.batch, 3, 3, channels)
        for name, form in forms(channels, stride).items():
            forward, both = time_form(form, x, kernels, args.repeats)
            layer = f"{channels} ch {size}x{size} s{stride}"
            print(f"{layer:<22}{name:<14}{forward:>11.1f}{both:>11.1f}", flush=True)


if __name__ == "__main__":
    main()
