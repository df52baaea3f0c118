"""DDP helpers: set-up from torchrun's environment, sums across ranks, and agreeing to stop."""

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
    """Join the process group when started by torchrun (nccl on CUDA, gloo on CPU).

    On CUDA each process takes its GPU (`LOCAL_RANK`) before joining, and names it to the
    group (`device_id`), so NCCL and `barrier` never have to guess which device a rank uses.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device_type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return Dist(dist.get_rank(), world, local_rank)


def sum_across(values: torch.Tensor, ctx: Dist) -> torch.Tensor:
    """Element-wise sum over ranks (identity in one process)."""
    if ctx.enabled:
        values = values.clone()
        dist.all_reduce(values)
    return values


class StopVote:
    """Every rank's stop request (a signal number, 0 for none), combined over the ranks one
    step late so that all ranks see the same answer at the same step.

    `exchange` sends this rank's request and returns the largest request any rank sent at the
    previous call. The all-reduce (one integer) runs on a gloo group of its own, in the
    background between two calls: no device sync, no wait in the training loop, and no
    collective interleaved with the model's.
    """

    def __init__(self) -> None:
        self.group = dist.new_group(backend="gloo")  # every rank creates it at the same point
        self.pending: tuple[dist.Work, torch.Tensor] | None = None

    def exchange(self, request: int) -> int:
        agreed = self.wait()
        if not agreed:  # once a stop is agreed, every rank stops sending alike
            flag = torch.tensor([request], dtype=torch.int32)
            work = dist.all_reduce(flag, dist.ReduceOp.MAX, group=self.group, async_op=True)
            self.pending = (work, flag)
        return agreed

    def wait(self) -> int:
        """The answer to the request in flight (0 when none is)."""
        if self.pending is None:
            return 0
        (work, flag), self.pending = self.pending, None
        work.wait()
        return int(flag.item())


def barrier(ctx: Dist) -> None:
    if ctx.enabled:
        dist.barrier()


def teardown(ctx: Dist) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
