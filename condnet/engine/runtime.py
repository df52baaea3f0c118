"""Where and how a run computes: device, precision, memory format, seeding, determinism."""

from __future__ import annotations

import contextlib
import os
import platform
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from condnet.config import RunConfig
from condnet.engine import distributed
from condnet.engine.distributed import Dist
from condnet.errors import CondnetError
from condnet.models import native
from condnet.models.condconv import CondConv2d
from condnet.models.layout import channels_last_weights


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dist: Dist
    amp: bool  # bf16 autocast (CUDA only)
    channels_last: bool

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def to_device(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        images = images.to(self.device, non_blocking=True, memory_format=fmt)
        return images, labels.to(self.device, non_blocking=True)

    def record(self) -> dict[str, str]:
        """What a result was computed with, for the metrics and the report: the precision
        (``fp32`` or ``bf16 autocast``) and the device (times the DDP processes)."""
        processes = f" x {self.dist.world}" if self.dist.enabled else ""
        return {
            "precision": "bf16 autocast" if self.amp else "fp32",
            "device": device_name(self.device) + processes,
        }


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name (from /proc/cpuinfo where there is one)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "CPU: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"CPU: {cpu}"


def place_model(model: torch.nn.Module, rt: Runtime) -> torch.nn.Module:
    """Move `model` to the device; with channels_last, every 4-D weight goes NHWC too. On the
    CPU a CondConv network's compiled kernel is loaded here, and built first where it is
    missing (`condnet.models.native.ensure_built`), before any clock runs."""
    model.to(rt.device)
    if rt.device.type == "cpu" and any(isinstance(m, CondConv2d) for m in model.modules()):
        native.ensure_built()
    return channels_last_weights(model) if rt.channels_last else model


def make_runtime(cfg: RunConfig) -> Runtime:
    """Pick the device (auto: CUDA when present), join DDP under torchrun, set determinism."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise CondnetError("run.device: cuda was asked for but no CUDA device is available")
    kind = (
        "cuda"
        if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    ctx = distributed.setup(kind)
    device = torch.device(kind, ctx.local_rank) if kind == "cuda" else torch.device("cpu")
    if kind == "cuda":
        torch.cuda.set_device(device)
        # run.amp=false is exact fp32: no TF32 convolutions either (cuDNN's default allows them).
        torch.backends.cudnn.allow_tf32 = cfg.amp
        torch.backends.cuda.matmul.allow_tf32 = False
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = kind == "cuda"
    return Runtime(device, ctx, cfg.amp and kind == "cuda", cfg.channels_last)


def seed_epoch(seed: int, epoch: int, rank: int) -> torch.Generator:
    """Seed every generator from (seed, epoch, rank) so that any epoch can be replayed exactly.

    Returns the generator for the data loader (shuffling and worker seeds).
    """
    base = (seed * 1_000_003 + epoch * 7_919 + rank) % 2**31
    random.seed(base)
    np.random.seed(base)
    torch.manual_seed(base)
    return torch.Generator().manual_seed(base)


def rng_state() -> dict:
    """All generator states as checkpoint-safe data (tensors, lists, numbers)."""
    version, state, gauss = random.getstate()
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [version, list(state), gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def set_rng_state(state: dict) -> None:
    """Restore `rng_state()`. The CUDA states are one per GPU visible when saved: each GPU
    visible now takes its own, and states of GPUs no longer visible are dropped."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        for index, device_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state, index)
    version, values, gauss = state["python"]
    random.setstate((version, tuple(values), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
