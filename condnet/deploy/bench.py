"""Inference latency and throughput of one model under several backends and batch sizes.

Backends: ``eager`` (the model as trained), ``fused`` (BN folded and channels_last weights,
`condnet.deploy.inference.prepare_inference`), ``compile``
(`torch.compile` of the fused model) and ``onnxruntime`` (the exported ONNX file). Each
(backend, batch) pair runs `warmup` untimed forward passes, then `iters` timed ones; the median
is reported, so one slow outlier (a page fault, another process) does not move the result.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from condnet.choices import BENCH_BACKENDS, DEVICES
from condnet.data.transform_spec import TransformSpec
from condnet.deploy.bundle import Bundle
from condnet.deploy.inference import prepare_inference
from condnet.errors import CondnetError
from condnet.models import CondNet
from condnet.timing import time_call

BACKENDS = BENCH_BACKENDS


@dataclass(frozen=True)
class Timing:
    """Median latency of one forward pass and the throughput it implies."""

    backend: str
    batch: int
    median_ms: float
    images_per_s: float


def bench(
    model: CondNet,
    *,
    backends: Sequence[str] = ("eager", "fused"),
    batches: Sequence[int] = (1, 64),
    device: str = "cpu",
    iters: int = 20,
    warmup: int = 5,
    resolution: int = 56,
) -> list[Timing]:
    """Time `model` (put in eval mode) under each backend at each batch size.

    The PyTorch backends use the model's CondConv formulation; ``onnxruntime`` always runs the
    exported ``batched`` one.
    """
    _validate(backends, batches, device=device, iters=iters, warmup=warmup, resolution=resolution)
    timings = []
    with tempfile.TemporaryDirectory(prefix="condnet-bench-") as workdir:
        for backend in backends:
            run = _runner(model, backend, device, resolution, Path(workdir))
            for batch in batches:
                images = torch.randn(batch, model.spec.in_channels, resolution, resolution)
                images = images.to(device)
                timed = time_call(lambda: run(images), runs=iters, warmup=warmup)  # noqa: B023
                seconds = timed.median
                timings.append(Timing(backend, batch, seconds * 1e3, batch / seconds))
    return timings


def _validate(backends, batches, *, device, iters, warmup, resolution) -> None:
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise CondnetError(
            f"backend: expected some of {', '.join(BACKENDS)}; got {unknown or 'none'}"
        )
    if device not in DEVICES:
        raise CondnetError(f"device: expected one of {', '.join(DEVICES)}; got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise CondnetError("device: cuda requested but torch sees no CUDA device")
    if not batches or min(batches) < 1 or iters < 1 or warmup < 0 or resolution < 1:
        raise CondnetError("batch sizes, iters and resolution must be positive, warmup >= 0")


def _runner(
    model: CondNet, backend: str, device: str, resolution: int, workdir: Path
) -> Callable[[Tensor], Any]:
    """A function that runs one forward pass of `model` under `backend`."""
    if backend == "onnxruntime":
        from condnet.deploy.export import OnnxClassifier, export_onnx

        path = workdir / "model.onnx"
        names = [str(i) for i in range(model.num_classes)]
        export_onnx(Bundle(model, names, TransformSpec(crop=resolution)), path)
        return OnnxClassifier(path, device)
    module = model.eval() if backend == "eager" else prepare_inference(model)
    module = module.to(device)
    if backend == "compile":
        module = torch.compile(module)

    def forward(images: Tensor) -> Tensor:
        with torch.inference_mode():
            return module(images)

    return forward


def format_timings(timings: Sequence[Timing], header: str) -> str:
    """One table: backend, batch, median latency, throughput."""
    lines = [header, f"  {'backend':<14}{'batch':>7}{'median ms':>13}{'images/s':>13}"]
    for t in timings:
        lines.append(f"  {t.backend:<14}{t.batch:>7}{t.median_ms:>13.3f}{t.images_per_s:>13.1f}")
    return "\n".join(lines)


def timings_to_dict(timings: Sequence[Timing]) -> list[dict[str, Any]]:
    return [asdict(t) for t in timings]
