"""The data each pipeline feeds the one training loop, per rank.

`data.pipeline=torchvision`: datasets of per-image transforms in DataLoaders.
`data.pipeline=tensor`: the split decoded once into a uint8 cache, held on the device (each
rank its shard) and transformed there in whole batches (`condnet.data.tensor_loader`).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, DistributedSampler

from condnet.config import Config
from condnet.data.datasets import (
    ShardSampler,
    SplitDataset,
    balanced_indices,
    cache_split,
    make_datasets,
    make_loader,
    wait_for_split_cache,
)
from condnet.data.sources import Split
from condnet.data.tensor_loader import DeviceSplit, TensorLoader
from condnet.engine.runtime import Runtime

Data = SplitDataset | DeviceSplit
Loader = DataLoader | TensorLoader


def split_data(
    cfg: Config, rt: Runtime, split: Split, name: str, *, progress: bool = False
) -> Data:
    """`split` ("train" or "val") ready for `train_loader` or `eval_loader`."""
    if cfg.data.pipeline == "torchvision":
        train_set, val_set = make_datasets(cfg.data, split, split)
        return train_set if name == "train" else val_set
    # Rank 0 builds the cache when it is missing or stale; the others wait for it.
    if rt.dist.main:
        _, cached = cache_split(cfg, split, name, progress=progress)
    else:
        cached = wait_for_split_cache(cfg, split, name)
    return DeviceSplit.from_cache(cached, rt.device, rt.dist.rank, rt.dist.world)


def train_loader(
    cfg: Config, data: Data, rt: Runtime, epoch: int, generator: torch.Generator
) -> Loader:
    """One epoch of this rank's training batches, its order and augmentation from `generator`."""
    per_rank = cfg.train.batch_size // rt.dist.world
    if isinstance(data, DeviceSplit):
        # Every rank takes as many images as the smallest shard holds: the same step count.
        device_generator = torch.Generator(rt.device).manual_seed(generator.initial_seed())
        length = data.total // rt.dist.world
        return TensorLoader(
            data,
            per_rank,
            cfg.data,
            device_generator,
            channels_last=rt.channels_last,
            length=length,
        )
    sampler = None
    if rt.dist.enabled:
        sampler = DistributedSampler(data, rt.dist.world, rt.dist.rank, seed=cfg.run.seed)
        sampler.set_epoch(epoch)
    drop_last = len(data) // rt.dist.world >= per_rank
    return make_loader(
        data,
        per_rank,
        sampler=sampler,
        shuffle=True,
        generator=generator,
        workers=cfg.data.num_workers,
        drop_last=drop_last,
    )


def eval_loader(cfg: Config, data: Data, rt: Runtime) -> Loader:
    """This rank's share of the validation set: every image exactly once over all ranks."""
    if isinstance(data, DeviceSplit):
        return TensorLoader(
            data, cfg.train.eval_batch_size, cfg.data, channels_last=rt.channels_last
        )
    # Compiled, the last (or a rank's shorter) batch is padded: one shape, one graph.
    sampler = ShardSampler(len(data), rt.dist.rank, rt.dist.world)
    return make_loader(
        data,
        cfg.train.eval_batch_size,
        sampler=sampler,
        shuffle=False,
        generator=None,
        workers=cfg.data.num_workers,
        pad=cfg.run.compile,
    )


def eval_subset(data: Data, size: int, seed: int) -> Data:
    """A fixed class-balanced subset of `size` validation examples (of this rank's shard)."""
    if isinstance(data, DeviceSplit):
        if size >= len(data):
            return data
        keep = torch.from_numpy(balanced_indices(data.labels.cpu().numpy(), size, seed)).to(
            data.labels.device
        )
        return DeviceSplit(data.images[keep], data.sizes[keep], data.labels[keep], data.skipped)
    if size >= len(data):
        return data
    return SplitDataset(
        data.split.take(balanced_indices(data.split.labels, size, seed)),
        data.transform,
        data.on_bad_image,
    )
