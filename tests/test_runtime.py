"""Seeding and the generators' states (`condnet.engine.runtime`): what makes runs replayable."""

import random

import numpy as np
import pytest
import torch

from condnet.engine.checkpoint import load_checkpoint, save_checkpoint
from condnet.engine.runtime import rng_state, seed_epoch, set_rng_state


def draws() -> list[float]:
    """The next numbers of every global generator, Gaussian ones included (Python's and NumPy's
    keep the second value of each pair in their state)."""
    return [
        random.random(),
        random.gauss(0, 1),
        float(np.random.rand()),
        float(np.random.standard_normal()),
        torch.rand(()).item(),
        torch.randn(()).item(),
    ]


def test_an_epoch_seed_sets_every_generator_and_returns_the_loader_s():
    first = seed_epoch(7, 3, 1)
    stream = draws() + [torch.rand((), generator=first).item()]
    again = seed_epoch(7, 3, 1)
    assert draws() + [torch.rand((), generator=again).item()] == stream
    assert first.initial_seed() == again.initial_seed()
    # Another seed, epoch or rank: other numbers from every generator.
    for args in ((8, 3, 1), (7, 4, 1), (7, 3, 0)):
        other = seed_epoch(*args)
        numbers = draws() + [torch.rand((), generator=other).item()]
        assert all(a != b for a, b in zip(numbers, stream, strict=True)), args


def test_generator_states_round_trip_through_a_checkpoint(tmp_path):
    seed_epoch(0, 2, 0)
    draws()  # mid-stream, Python's and NumPy's Gaussian generators each holding a spare value
    assert random.getstate()[2] is not None and np.random.get_state()[3] == 1
    state = {"model": {}, "model_spec": {}, "class_names": [], "rng": rng_state()}
    save_checkpoint(state, tmp_path / "last.pt")  # read back without pickled code
    expected = draws()
    seed_epoch(5, 0, 1)
    assert draws() != expected
    set_rng_state(load_checkpoint(tmp_path / "last.pt")["rng"])
    assert draws() == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_generator_state_round_trips(tmp_path):
    torch.cuda.manual_seed_all(3)
    torch.rand(4, device="cuda")
    save_checkpoint(
        {"model": {}, "model_spec": {}, "class_names": [], "rng": rng_state()}, tmp_path / "c.pt"
    )
    expected = torch.rand(4, device="cuda")
    torch.cuda.manual_seed_all(5)
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert torch.equal(torch.rand(4, device="cuda"), expected)


def test_cuda_states_from_more_gpus_restore_on_fewer(monkeypatch):
    """A checkpoint saved with 4 visible GPUs resumes where 1 is visible: GPU 0 takes its own
    state, the others are dropped (restoring all of them would index a missing device)."""
    calls, saved = [], rng_state()  # this machine's state, taken before CUDA is faked
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device=0: calls.append((s, device)))
    states = [torch.full((8,), i, dtype=torch.uint8) for i in range(4)]
    set_rng_state(saved | {"cuda": states})
    assert len(calls) == 1 and calls[0][1] == 0 and torch.equal(calls[0][0], states[0])


def test_a_ddp_rank_on_cuda_takes_its_gpu_before_joining_and_names_it(monkeypatch):
    """Under torchrun, rank 1 of 2 on CUDA: its GPU (LOCAL_RANK) is current before the NCCL
    group forms, and the group is told it (`device_id`), so no collective guesses a device."""
    import torch.distributed as dist

    from condnet.engine import distributed

    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("device", device)))
    monkeypatch.setattr(
        dist, "init_process_group", lambda backend, **kw: calls.append(("join", backend, kw))
    )
    ctx = distributed.setup("cuda")
    gpu = torch.device("cuda", 1)
    assert calls == [("device", gpu), ("join", "nccl", {"device_id": gpu})]
    assert (ctx.rank, ctx.world, ctx.local_rank) == (1, 2, 1)
    calls.clear()
    distributed.setup("cpu")  # gloo on the CPU: no device to take
    assert calls == [("join", "gloo", {})]
