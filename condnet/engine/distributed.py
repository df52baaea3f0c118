"""DDP helpers: set-up from torchrun's environment, and sums across ranks."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup(device_type: str) -> Dist:
    """Join the process group when started by torchrun (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Dist(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))


def sum_across(values: torch.Tensor, ctx: Dist) -> torch.Tensor:
    """Element-wise sum over ranks (identity in one process)."""
    if ctx.enabled:
        values = values.clone()
        dist.all_reduce(values)
    return values


def barrier(ctx: Dist) -> None:
    if ctx.enabled:
        dist.barrier()


def teardown(ctx: Dist) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
