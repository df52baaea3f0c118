"""`condnet.timing`: the one timing helper of the benchmarks and `condnet bench`."""

import time

import torch

from condnet.timing import time_call


def test_single_calls_are_timed_one_by_one_after_the_warm_up():
    calls = []

    def sleep():
        calls.append(len(calls))
        time.sleep(0.002 if len(calls) <= 2 else 0.02)  # the warm-up calls are short

    timed = time_call(sleep, runs=3, warmup=2)
    assert len(calls) == 5 and timed.runs == 3
    assert 0.02 <= timed.fastest <= timed.median < 0.2  # only the timed calls count


def test_a_time_budget_times_blocks_of_calls_at_the_caller_s_thread_count():
    threads, before = [], torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        timed = time_call(lambda: threads.append(torch.get_num_threads()), min_seconds=0.01)
    finally:
        torch.set_num_threads(before)
    assert timed.runs >= 1 and 0 < timed.fastest <= timed.median < 0.01
    assert set(threads) == {2}  # not torch.utils.benchmark's default of 1
