"""The learning-rate schedule (`condnet.engine.schedule`)."""

import math

import pytest
import torch

from condnet.config import TrainConfig
from condnet.engine.schedule import lr_at


def test_paper_learning_rate_schedule():
    cfg = TrainConfig()

    def cosine(e):
        return 0.0002 + 0.5 * (0.2 - 0.0002) * (
            1 + torch.cos(torch.tensor(torch.pi * (e - 5) / 49)).item()
        )

    expected = {
        0: 0.002,
        1: 0.002 + 0.198 / 5,
        4: 0.002 + 0.198 * 4 / 5,
        5: 0.2,
        30: cosine(30),
        54: 0.0002,
    }
    for epoch, lr in expected.items():
        assert lr_at(epoch, cfg) == pytest.approx(lr, rel=1e-6), epoch


def test_schedule_per_step_is_the_same_curve_at_fractional_epochs():
    cfg = TrainConfig(epochs=3, warmup_epochs=1, lr_start=0.02, lr_peak=0.2, lr_final=0.002)
    assert lr_at(0.5, cfg) == pytest.approx(0.11)  # half-way through the warm-up
    assert lr_at(1.0, cfg) == pytest.approx(0.2) and lr_at(2.0, cfg) == pytest.approx(0.002)
    assert lr_at(1.5, cfg) == pytest.approx(0.002 + 0.5 * 0.198 * (1 + math.cos(math.pi / 2)))
    # The last epoch's steps stay at lr_final: the cosine is held there, not continued upwards.
    assert all(lr_at(2 + step / 10, cfg) == pytest.approx(0.002) for step in range(10))
