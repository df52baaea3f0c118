"""A compiled CPU kernel for CondConv's depthwise convolution: one kernel per example, as torch
operators (``torch.ops.condnet.depthwise`` and its two gradients).

PyTorch has no convolution with per-example kernels. The portable forms
(`condnet.models.condconv_forms`) fold the batch into the groups of one grouped convolution,
which on the CPU costs 2-4x a plain depthwise convolution and needs the map in NCHW.
`kernels.cpp` computes it directly on channels_last maps, forward and both gradients,
vectorised over the channels (`benchmarks/RESULTS.md` has the measurements), and registers the
three as operators (``TORCH_LIBRARY``). This module adds their autograd formula and their fake
(shape-only) implementations, so torch.compile and torch.export trace through them.

The library is built by an explicit step, `build()` (`make setup`, or `condnet kernels`), with
the system's C++ compiler in a child process (about 40 s; one build per CPU kind and torch
version, under `$XDG_CACHE_HOME/condnet/kernels`). `available()` only loads a built library,
never builds. Without one (no compiler, not built yet, or ``CONDNET_NATIVE=0`` in the
environment) CondConv keeps its portable forms, which compute the same function (the tests
hold them equal).
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("kernels.cpp")
_state: dict[str, bool] = {}  # build name -> loaded
_why_not: list[str] = []


@functools.cache
def build_name() -> tuple[str, tuple[str, ...]]:
    """A build name and compiler flags for this CPU kind and torch version (a build for
    another torch would not load): AVX2 code where the CPU has it."""
    capability = torch.backends.cpu.get_cpu_capability()  # "AVX2", "AVX512", "DEFAULT", ...
    version = re.sub(r"\W", "_", torch.__version__)
    if capability in ("AVX2", "AVX512"):
        return f"condnet_ops_avx2_torch{version}", ("-O3", "-mavx2", "-mfma")
    return f"condnet_ops_base_torch{version}", ("-O3",)


def build_folder() -> Path:
    """Where this CPU kind's build lives (`$XDG_CACHE_HOME/condnet/kernels/<name>`)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "condnet" / "kernels" / build_name()[0]


def library(folder: Path | None = None) -> Path:
    """The built shared library's path in `folder` (default: `build_folder()`)."""
    return (folder or build_folder()) / f"{build_name()[0]}.so"


@torch.compiler.assume_constant_result  # torch.compile takes the answer, not the file checks
def available() -> bool:
    """Whether the operators can run here: loads a built library on first call, never builds.
    False with ``CONDNET_NATIVE=0``, or when no build exists (`why_not` says which)."""
    if os.environ.get("CONDNET_NATIVE", "1") == "0":
        return False
    name = build_name()[0]
    if name not in _state:
        _state[name] = _load(library())
    return _state[name]


def why_not() -> str:
    """Why `available()` is False: the environment setting, a missing build, or the last line
    of the build's error."""
    if os.environ.get("CONDNET_NATIVE", "1") == "0":
        return "disabled by CONDNET_NATIVE=0"
    return _why_not[-1] if _why_not else ""


def ensure_built() -> bool:
    """`available()`, building the library first where it is missing (not where
    ``CONDNET_NATIVE=0`` turns it off): a run's set-up step, never a forward pass."""
    if available():
        return True
    return os.environ.get("CONDNET_NATIVE", "1") != "0" and build()


def build(folder: Path | None = None, *, quiet: bool = False) -> bool:
    """Compile the library into `folder` (default: `build_folder()`) unless it is there, then
    load it; False (the reason in `why_not`) when it cannot be built. The compiler runs in a
    child process with the environment's tools (pip's ninja beside this Python included)."""
    folder = folder or build_folder()
    target = library(folder)
    if not target.exists():
        if not quiet:
            print("condnet: compiling the CondConv depthwise kernel (once; ~40 s)", file=sys.stderr)
        error = _compile(folder)
        if error:
            _why_not.append(error)
            if not quiet:
                print(f"condnet: kernel not built ({error}); using grouped", file=sys.stderr)
            return False
    if folder == build_folder():
        _state[build_name()[0]] = _load(target)
        return _state[build_name()[0]]
    return target.exists()


def _compile(folder: Path) -> str:
    """Build in a child process; returns the error's last line, or "" on success."""
    name, flags = build_name()
    folder.mkdir(parents=True, exist_ok=True)
    script = (
        "import sys; from torch.utils import cpp_extension; "
        "cpp_extension.load(sys.argv[1], [sys.argv[2]], extra_cflags=sys.argv[4:], "
        "build_directory=sys.argv[3], is_python_module=False, verbose=False)"
    )
    env = dict(os.environ)  # the child's PATH gets pip's ninja; this process's stays as it is
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    done = subprocess.run(
        [sys.executable, "-c", script, name, str(SOURCE), str(folder), *flags],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode == 0:
        return ""
    lines = [line for line in (done.stderr + done.stdout).strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"the build exited with status {done.returncode}"


def _load(path: Path) -> bool:
    """Load the library's operators and register their Python parts, once per process."""
    if not hasattr(torch.ops.condnet, "depthwise"):
        if not path.exists():
            _why_not.append(f"not built yet (make setup, or condnet kernels): {path}")
            return False
        try:
            torch.ops.load_library(str(path))
        except (OSError, RuntimeError) as err:
            _why_not.append(str(err).strip().splitlines()[-1])
            return False
        _register()
    return True


def _register() -> None:
    """The operators' fake implementations (shapes only) and the forward's autograd formula."""

    @torch.library.register_fake("condnet::depthwise")
    def _(x, kernels, bias, stride, pad):
        k = kernels.shape[1]
        out_h = (x.shape[2] + 2 * pad - k) // stride + 1
        out_w = (x.shape[3] + 2 * pad - k) // stride + 1
        return x.new_empty(x.shape[0], x.shape[1], out_h, out_w).contiguous(
            memory_format=torch.channels_last
        )

    @torch.library.register_fake("condnet::depthwise_backward_input")
    def _(grad, kernels, height, width, stride, pad):
        shape = (grad.shape[0], grad.shape[1], height, width)
        return grad.new_empty(shape).contiguous(memory_format=torch.channels_last)

    @torch.library.register_fake("condnet::depthwise_backward_kernels")
    def _(grad, x, k, stride, pad):
        return grad.new_empty(grad.shape[0], k, k, grad.shape[1])

    torch.library.register_autograd("condnet::depthwise", _backward, setup_context=_setup_context)


def _setup_context(ctx, inputs, output) -> None:
    x, kernels, bias, stride, pad = inputs
    ctx.save_for_backward(x, kernels)
    ctx.geometry = (stride, pad, bias is not None)


def _backward(ctx, grad: Tensor):
    x, kernels = ctx.saved_tensors
    stride, pad, has_bias = ctx.geometry
    ops = torch.ops.condnet
    grad_x = grad_k = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_x = ops.depthwise_backward_input(grad, kernels, x.shape[2], x.shape[3], stride, pad)
    if ctx.needs_input_grad[1]:
        grad_k = ops.depthwise_backward_kernels(grad, x, kernels.shape[1], stride, pad)
    if has_bias and ctx.needs_input_grad[2]:
        grad_bias = grad.sum((0, 2, 3))
    return grad_x, grad_k, grad_bias, None, None


def per_example_depthwise(
    x: Tensor, kernels: Tensor, bias: Tensor | None, stride: int, pad: int
) -> Tensor:
    """``out[b] = depthwise_conv(x[b], kernels[b]) + bias`` on channels_last float32 maps;
    `kernels` is (batch, k, k, channels), contiguous. Needs `available()`."""
    return torch.ops.condnet.depthwise(x, kernels, bias, stride, pad)
