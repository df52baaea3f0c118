"""The tensor pipeline's loader: a cached split held on the device, batched and transformed there.

It yields what the torchvision loader yields, (images, labels, unreadable-file messages), so the
one training loop runs on either. No host sync and no per-image Python per step; every batch
of an epoch has the same shape (training drops the last partial batch; evaluation pads it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from condnet.config import DataConfig
from condnet.data.batch_transforms import center_crops, normalize_, resized_crops, sample_boxes
from condnet.data.cache import CachedSplit

IGNORE = -100  # label of a padding row: cross_entropy ignores it and it is never a top-k hit


@dataclass
class DeviceSplit:
    """Uint8 canvases with each image's size and label, all on one device."""

    images: torch.Tensor  # N x H x W x 3 uint8
    sizes: torch.Tensor  # N x 2 int64 (height, width)
    labels: torch.Tensor  # N int64
    skipped: list[str] = field(default_factory=list)  # unreadable files left out of the cache
    total: int = -1  # images over all ranks' shards (-1: this split alone)

    def __post_init__(self) -> None:
        self.total = len(self) if self.total < 0 else self.total

    def __len__(self) -> int:
        return self.labels.shape[0]

    @classmethod
    def from_cache(
        cls, cached: CachedSplit, device: torch.device, rank: int = 0, world: int = 1
    ) -> DeviceSplit:
        """This rank's shard (images rank, rank + world, ...), copied to `device` once.

        The unreadable-file messages go to rank 0 alone, so that a sum over ranks counts each once.
        """
        take = slice(rank, None, world)
        images = torch.from_numpy(np.array(cached.images[take])).to(device)
        sizes = torch.from_numpy(np.array(cached.sizes[take])).to(device)
        labels = torch.from_numpy(np.array(cached.labels[take])).to(device)
        return cls(images, sizes, labels, list(cached.skipped) if rank == 0 else [], len(cached))


class TensorLoader:
    """Batches of a `DeviceSplit` as (images, labels, skipped messages).

    Training (a `generator` is given): a new order each epoch, `length` images of it
    (default: all) in full batches of `batch_size` (fewer only when `length` is smaller), the
    paper's random resized crop and flip; the skipped messages come with the first batch.
    Evaluation: in order, the center crop, the last batch padded to `batch_size` with label
    -100 rows (the loss ignores them; `evaluate` counts only the others).
    """

    def __init__(
        self,
        split: DeviceSplit,
        batch_size: int,
        cfg: DataConfig,
        generator: torch.Generator | None = None,
        *,
        channels_last: bool = False,
        length: int | None = None,
    ) -> None:
        self.split, self.cfg, self.generator = split, cfg, generator
        self.length = len(split) if length is None else min(length, len(split))
        self.batch = min(batch_size, self.length) if generator is not None else batch_size
        self.format = torch.channels_last if channels_last else torch.contiguous_format
        device = split.images.device
        self.mean = torch.tensor(cfg.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.std, device=device).view(1, 3, 1, 1)

    def __len__(self) -> int:
        if self.generator is not None:
            return self.length // max(self.batch, 1)
        return math.ceil(self.length / self.batch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        return self._train() if self.generator is not None else self._eval()

    def _train(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        device = self.split.images.device
        order = torch.randperm(len(self.split), generator=self.generator, device=device)
        for step in range(len(self)):
            index = order[step * self.batch : (step + 1) * self.batch]
            yield (
                self._augment(index),
                self.split.labels[index],
                self.split.skipped if step == 0 else [],
            )

    def _augment(self, index: torch.Tensor) -> torch.Tensor:
        cfg, generator = self.cfg, self.generator
        boxes = sample_boxes(self.split.sizes[index], cfg.scale, cfg.ratio, generator)
        flip = torch.rand(index.shape[0], generator=generator, device=index.device) < cfg.hflip
        canvases = self.split.images[index].permute(0, 3, 1, 2).float()
        images = resized_crops(canvases, boxes, cfg.crop, flip)
        return normalize_(images, self.mean, self.std).contiguous(memory_format=self.format)

    def _eval(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        device = self.split.images.device
        for step in range(len(self)):
            start = step * self.batch
            real = min(self.batch, self.length - start)
            # Padding rows repeat image 0 and carry the ignored label.
            index = torch.arange(start, start + self.batch, device=device)
            index = torch.where(index < self.length, index, 0)
            labels = self.split.labels[index]
            if real < self.batch:
                labels = torch.where(torch.arange(self.batch, device=device) < real, labels, IGNORE)
            crops = center_crops(self.split.images, index, self.split.sizes[index], self.cfg.crop)
            images = normalize_(crops.permute(0, 3, 1, 2).float(), self.mean, self.std)
            yield images.contiguous(memory_format=self.format), labels, []
