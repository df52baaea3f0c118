"""Schedules, pure functions of the epoch: the learning rate (the paper's recipe) and CondConv
routing."""

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


def routing_temperature_at(epoch: float, cfg: TrainConfig) -> float:
    """The routers' temperature: `routing_temperature` at epoch 0, linearly down to 1 at
    `routing_anneal_epochs` (1 from the start when that is 0)."""
    if epoch >= cfg.routing_anneal_epochs:
        return 1.0
    return (
        cfg.routing_temperature
        + (1.0 - cfg.routing_temperature) * epoch / cfg.routing_anneal_epochs
    )


def routing_lr_factor(epoch: float, cfg: TrainConfig) -> float:
    """Multiplies the routers' learning rate: 0 at epoch 0, linearly up to 1 at
    `routing_warmup_epochs` (1 from the start when that is 0)."""
    if epoch >= cfg.routing_warmup_epochs:
        return 1.0
    return epoch / cfg.routing_warmup_epochs
