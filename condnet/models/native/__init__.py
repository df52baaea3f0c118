"""A compiled CPU kernel for CondConv's depthwise convolution: one kernel per example.

PyTorch has no convolution with per-example kernels. The portable form (`condconv.py`) folds
the batch into the groups of one grouped convolution, which on the CPU costs 2-4x a plain
depthwise convolution and needs the map in NCHW. `kernels.cpp` computes it directly on
channels_last maps, forward and both gradients, vectorised over the channels
(`benchmarks/RESULTS.md` has the measurements).

It compiles on first use with the system's C++ compiler (`torch.utils.cpp_extension`, about
40 s, cached per CPU kind and torch version in torch's extension folder). Without a compiler,
or with ``CONDNET_NATIVE=0`` in the environment, `kernel()` returns None and CondConv keeps its
portable formulations, which compute the same function (the tests hold them equal).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("kernels.cpp")
_loaded: dict[str, ModuleType | None] = {}
_why_not: list[str] = []


@functools.cache
def _build_flags() -> tuple[str, list[str]]:
    """A build name and compiler flags for this CPU kind and torch version (a build for
    another torch would not load): AVX2 code where the CPU has it."""
    capability = torch.backends.cpu.get_cpu_capability()  # "AVX2", "AVX512", "DEFAULT", ...
    version = re.sub(r"\W", "_", torch.__version__)
    if capability in ("AVX2", "AVX512"):
        return f"condnet_kernels_avx2_torch{version}", ["-O3", "-mavx2", "-mfma"]
    return f"condnet_kernels_base_torch{version}", ["-O3"]


def kernel() -> ModuleType | None:
    """The compiled kernel, built on first call; None where it cannot be (see `why_not`)."""
    if os.environ.get("CONDNET_NATIVE", "1") == "0":
        return None
    name, flags = _build_flags()
    if name not in _loaded:
        _loaded[name] = _build(name, flags)
    return _loaded[name]


def why_not() -> str:
    """Why `kernel()` is None: the environment setting or the last line of the build's error."""
    if os.environ.get("CONDNET_NATIVE", "1") == "0":
        return "disabled by CONDNET_NATIVE=0"
    return _why_not[-1] if _why_not else ""


def _build(name: str, flags: list[str]) -> ModuleType | None:
    # Its import warns that no CUDA runtime is found: irrelevant to a CPU kernel.
    quiet = logging.getLogger("torch.utils.cpp_extension")
    level, quiet.level = quiet.level, logging.ERROR
    try:
        from torch.utils import cpp_extension
    finally:
        quiet.setLevel(level)

    folder = Path(cpp_extension._get_build_directory(name, verbose=False))
    if not (folder / f"{name}.so").exists():
        print(
            "condnet: compiling the CondConv depthwise kernel for this CPU kind (once; ~40 s)",
            file=sys.stderr,
            flush=True,
        )
    venv_bin = str(Path(sys.executable).parent)  # pip's ninja, when no system one is on PATH
    if shutil.which("ninja") is None and venv_bin not in os.environ.get("PATH", ""):
        os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
    try:
        return cpp_extension.load(name, [str(SOURCE)], extra_cflags=flags, verbose=False)
    except Exception as err:  # no compiler, a failed build: whatever it raises, fall back
        lines = str(err).strip().splitlines()
        _why_not.append(lines[-1] if lines else type(err).__name__)
        print(f"condnet: kernel not built ({_why_not[-1]}); using grouped", file=sys.stderr)
        return None


class PerExampleDepthwise(torch.autograd.Function):
    """``out[b] = depthwise_conv(x[b], kernels[b]) + bias`` on channels_last float32 maps;
    `kernels` is (batch, k, k, channels), contiguous."""

    @staticmethod
    def forward(ctx, x: Tensor, kernels: Tensor, bias: Tensor | None, stride: int, pad: int):
        ctx.save_for_backward(x, kernels)
        ctx.geometry = (stride, pad, bias is not None)
        return kernel().forward(x, kernels, bias, stride, pad)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, kernels = ctx.saved_tensors
        stride, pad, has_bias = ctx.geometry
        native = kernel()
        grad_x = grad_k = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = native.backward_input(grad, kernels, x.shape[2], x.shape[3], stride, pad)
        if ctx.needs_input_grad[1]:
            grad_k = native.backward_kernels(grad, x, kernels.shape[1], stride, pad)
        if has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3))
        return grad_x, grad_k, grad_bias, None, None


def per_example_depthwise(
    x: Tensor, kernels: Tensor, bias: Tensor | None, stride: int, pad: int
) -> Tensor:
    """See `PerExampleDepthwise`; needs `kernel()` to be available."""
    return PerExampleDepthwise.apply(x, kernels, bias, stride, pad)
