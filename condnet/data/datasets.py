"""Datasets over `Split`s, the source dispatch, subsets, and data loaders."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from condnet.config import Config, DataConfig
from condnet.data import sources
from condnet.data.cache import CachedSplit, cache_folder, load_cached, wait_for_cache
from condnet.data.images import BadImage, load_rgb
from condnet.data.sources import Split
from condnet.data.tensor_loader import IGNORE
from condnet.data.transform_spec import TransformSpec
from condnet.data.transforms import train_transform
from condnet.errors import CondnetError


class SplitDataset(Dataset):
    """(transformed image, label) pairs; an unreadable file yields its error message instead.

    With `on_bad_image="skip"` the message is also printed as one warning line; the training
    loop counts skipped files, or stops with the message when `on_bad_image="error"`.
    """

    def __init__(self, split: Split, transform: Callable, on_bad_image: str = "skip") -> None:
        self.split, self.transform, self.on_bad_image = split, transform, on_bad_image

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        images = self.split.images
        if isinstance(images, np.ndarray):
            image = torch.from_numpy(images[index]).permute(2, 0, 1)
            image = image.expand(3, -1, -1) if image.shape[0] == 1 else image
        else:
            try:
                image = load_rgb(images[index])
            except BadImage as err:
                if self.on_bad_image == "skip":
                    print(f"warning: skipped {err}", file=sys.stderr)
                return str(err)
        return self.transform(image), int(self.split.labels[index])


def collate_skipping(batch: list) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stack the readable samples; the third item lists the unreadable ones' messages."""
    good = [b for b in batch if not isinstance(b, str)]
    bad = [b for b in batch if isinstance(b, str)]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), bad
    images = torch.stack([b[0] for b in good])
    labels = torch.tensor([b[1] for b in good], dtype=torch.long)
    return images, labels, bad


def collate_padded(batch: list, size: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """`collate_skipping`, the readable samples then padded to `size` rows of zeros labelled
    `IGNORE` (a fixed batch shape, so a compiled network sees one shape; the padding counts
    nowhere in `evaluate`)."""
    images, labels, bad = collate_skipping(batch)
    missing = size - labels.shape[0]
    if missing <= 0 or labels.numel() == 0:
        return images, labels, bad
    images = torch.cat([images, images.new_zeros(missing, *images.shape[1:])])
    labels = torch.cat([labels, labels.new_full((missing,), IGNORE)])
    return images, labels, bad


def load_splits(cfg: DataConfig, seed: int) -> tuple[Split, Split]:
    """Read the configured source and take the configured class-balanced subsets."""
    root = Path(cfg.root) if cfg.root else None
    if cfg.source == "synthetic":
        train, val = sources.make_synthetic(
            cfg.synthetic_images, cfg.synthetic_classes, cfg.synthetic_size, seed
        )
    elif cfg.source == "fashion-mnist":
        train, val = sources.read_fashion_mnist(root or Path(sources.FASHION_MNIST_ROOT))
    elif root is None:
        raise CondnetError(f"data.root: required for data.source={cfg.source}")
    elif cfg.source == "imagefolder":
        train, val = sources.read_imagefolder(root)
        if val is None:  # a plain folder of class folders: hold out a class-balanced share
            train, val = hold_out(train, cfg.val_fraction, seed)
    elif cfg.source == "imagenet64":
        train, val = sources.read_imagenet64(root, Path(cfg.classes) if cfg.classes else None)
    else:
        train, val = sources.read_cifar(root, 10 if cfg.source == "cifar10" else 100, cfg.download)
    return subset(train, cfg.train_subset, seed), subset(val, cfg.val_subset, seed + 1)


def hold_out(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """(the rest, the held-out share): `fraction` of each class's examples (at least one),
    chosen by `seed`; the same files for the same folder and seed."""
    counts = np.bincount(split.labels, minlength=len(split.class_names))
    if (counts < 2).any():
        name = split.class_names[int(np.argmin(counts))]
        raise CondnetError(
            f"class {name!r}: needs at least 2 images to hold one out for validation"
        )
    size = max(len(split.class_names), round(fraction * len(split)))
    held = balanced_indices(split.labels, size, seed + 7)
    rest = np.setdiff1d(np.arange(len(split)), held)
    return split.take(rest), split.take(held)


def subset(split: Split, size: int, seed: int) -> Split:
    """`size` examples, as equal per class as possible, in a seeded random order (0: all)."""
    if size == 0 or size >= len(split):
        return split
    return split.take(balanced_indices(split.labels, size, seed))


def balanced_indices(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of `size` examples, as equal per class as possible, chosen by `seed`."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    # Rank each example within its class, then take the lowest ranks first: class-balanced.
    rank = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = order[labels[order] == label]
        rank[members] = np.arange(len(members))
    return np.sort(order[np.argsort(rank[order], kind="stable")[:size]])


def make_datasets(cfg: DataConfig, train: Split, val: Split) -> tuple[SplitDataset, SplitDataset]:
    mean, std = cfg.mean, cfg.std
    train_tf = train_transform(
        cfg.crop, scale=cfg.scale, ratio=cfg.ratio, hflip=cfg.hflip, mean=mean, std=std
    )
    eval_tf = TransformSpec.from_config(cfg).build()
    return SplitDataset(train, train_tf, cfg.on_bad_image), SplitDataset(
        val, eval_tf, cfg.on_bad_image
    )


class ShardSampler(Sampler[int]):
    """Indices rank, rank + world, ...: every example exactly once over all ranks (evaluation)."""

    def __init__(self, size: int, rank: int, world: int) -> None:
        self.indices = range(rank, size, world)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    sampler: Sampler | None,
    shuffle: bool,
    generator: torch.Generator | None,
    workers: int,
    drop_last: bool = False,
    pad: bool = False,
) -> DataLoader:
    """Batches of readable samples; `pad`: every batch padded to `batch_size` rows
    (`collate_padded`)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=shuffle if sampler is None else False,
        generator=generator,
        num_workers=workers,
        collate_fn=partial(collate_padded, size=batch_size) if pad else collate_skipping,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )


def cache_split(
    cfg: Config, split: Split, name: str, *, progress: bool = False
) -> tuple[Path, CachedSplit]:
    """The tensor pipeline's cache of split `name` ("train" or "val") of the data `cfg`
    describes: its folder and contents, built there first when missing or stale."""
    d = cfg.data
    folder = cache_folder(d, name, cfg.run.seed)
    return folder, load_cached(
        split,
        folder,
        d.resize,
        d.crop,
        on_bad_image=d.on_bad_image,
        workers=d.num_workers,
        progress=progress,
    )


def wait_for_split_cache(cfg: Config, split: Split, name: str) -> CachedSplit:
    """`cache_split`'s contents once another process (DDP rank 0) has built them."""
    d = cfg.data
    return wait_for_cache(
        split, cache_folder(d, name, cfg.run.seed), d.resize, d.crop, d.on_bad_image
    )


def build_caches(cfg: Config, progress: bool = False) -> dict[str, tuple[Path, CachedSplit]]:
    """Both splits decoded into the tensor pipeline's cache now, as a run of `cfg` would on
    its start (reused when current): {"train": (folder, cache), "val": (folder, cache)}."""
    splits = zip(("train", "val"), load_splits(cfg.data, cfg.run.seed), strict=True)
    return {name: cache_split(cfg, split, name, progress=progress) for name, split in splits}
