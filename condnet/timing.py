"""Timing a call, the one way every benchmark and `condnet bench` time, on torch.utils.benchmark:
a fixed number of single calls on its clock (which synchronises the accelerator before each
reading), or, for a time budget, its `Timer.blocked_autorange` at the caller's thread count."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timed:
    """Seconds per call: the median and the fastest of `runs` measurements."""

    median: float
    fastest: float
    runs: int


def time_call(
    fn: Callable[[], object], *, runs: int | None = None, min_seconds: float = 0.2, warmup: int = 1
) -> Timed:
    """Time `fn()` after `warmup` untimed calls: `runs` calls timed one by one, or (without
    `runs`) blocks of calls until `min_seconds` have passed (`Timer.blocked_autorange`)."""
    # Imported here: torch.utils.benchmark is slow to import and warns on a machine without CUDA.
    from torch.utils.benchmark import Timer
    from torch.utils.benchmark.utils.timer import timer as clock

    for _ in range(warmup):
        fn()
    if runs:  # one call per reading (Timer.timeit would add warm-up calls of its own)
        times = []
        for _ in range(runs):
            start = clock()
            fn()
            times.append(clock() - start)
    else:
        timer = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
        times = timer.blocked_autorange(min_run_time=min_seconds).times
    return Timed(statistics.median(times), min(times), len(times))
