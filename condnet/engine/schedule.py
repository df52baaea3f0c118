"""Learning-rate schedule: a pure function of the epoch (SPEC section 4)."""

from __future__ import annotations

import math

from condnet.config import TrainConfig


def lr_at(epoch: float, cfg: TrainConfig) -> float:
    """Linear warm-up from lr_start towards lr_peak over `warmup_epochs`, then a half-cosine
    from lr_peak to lr_final, reached at the last epoch.

    Paper recipe: 0.002 at epoch 0, 0.2 at epoch 5, 0.0002 at epoch 54. With
    `train.lr_per_step` the trainer passes fractional epochs (epoch + step / steps), which makes
    the same curve smooth for runs of a few epochs.
    """
    warm = cfg.warmup_epochs
    if epoch < warm:
        return cfg.lr_start + (cfg.lr_peak - cfg.lr_start) * epoch / warm
    span = max(cfg.epochs - 1 - warm, 1)
    progress = min((epoch - warm) / span, 1.0)
    return cfg.lr_final + 0.5 * (cfg.lr_peak - cfg.lr_final) * (1 + math.cos(math.pi * progress))
