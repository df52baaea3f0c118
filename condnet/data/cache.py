"""A decoded uint8 copy of a split on disk for the tensor pipeline: decode once, map many times.

Each image is decoded once (`load_rgb`), its short side resized to `data.resize` exactly as the
eval transform does (torchvision's tensor resize, antialiased), and its long side center-cropped
to at most `long_side()` (1.5 x the short side). It is stored at the top left of a fixed
canvas, edge pixels repeated into the unused part, so a split is one N x H x W x 3 uint8 array
(`images.npy`, memory-mapped) beside each image's height and width (`sizes.npy`) and label
(`labels.npy`). Arrays of equal-sized images get a canvas of exactly their (resized) size: the
down-sampled ImageNet batches at 64 px are copied unchanged. Files get a square canvas of the
long side. `manifest.json` holds a fingerprint of the source (file paths, sizes and mtimes, or
the array's bytes; the labels; the sizes): a cache whose fingerprint differs is rebuilt.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from condnet.config import DataConfig
from condnet.data.images import BadImage, load_rgb
from condnet.data.sources import Split
from condnet.errors import CondnetError
from condnet.files import fsync_dir, write_atomically

VERSION = 1
MANIFEST = "manifest.json"


@dataclass
class CachedSplit:
    images: np.ndarray  # N x H x W x 3 uint8 canvases, each image at the top left
    sizes: np.ndarray  # N x 2 int64: each image's height and width on its canvas
    labels: np.ndarray  # N int64
    skipped: list[str]  # one message per unreadable file left out

    def __len__(self) -> int:
        return len(self.labels)


def default_root() -> Path:
    """`$XDG_CACHE_HOME/condnet`, else `~/.cache/condnet`."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "condnet"


def cache_folder(cfg: DataConfig, split: str, seed: int) -> Path:
    """The folder of one split's cache: named by what selects the split, so that every run and
    model over the same data shares it; the manifest's fingerprint catches changed files."""
    identity = {
        "split": split,
        "seed": seed,
        "resize": cfg.resize,
        "crop": cfg.crop,
        "source": cfg.source,
        "classes": cfg.classes and str(Path(cfg.classes).resolve()),
        "root": cfg.root and str(Path(cfg.root).resolve()),
        "subset": cfg.train_subset if split == "train" else cfg.val_subset,
        "synthetic": [cfg.synthetic_images, cfg.synthetic_classes, cfg.synthetic_size],
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return (Path(cfg.cache) if cfg.cache else default_root()) / f"{cfg.source}-{split}-{digest}"


def long_side(size: int, crop: int) -> int:
    """The longest side kept: 1.5 x `size`, with the parity of `crop`, so that a center crop of
    the capped image starts at the same pixel as one of the whole image."""
    side = math.ceil(1.5 * size)
    return side + (side - crop) % 2


def fingerprint(split: Split, size: int, longest: int) -> str:
    """A digest of the source's content: what a changed source changes."""
    digest = hashlib.sha256(f"condnet cache v{VERSION} {size} {longest}\n".encode())
    if isinstance(split.images, np.ndarray):
        digest.update(repr(split.images.shape).encode())
        digest.update(np.ascontiguousarray(split.images).data)
    else:
        for path in split.images:
            try:
                stat = os.stat(path)
                digest.update(f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
            except OSError:
                digest.update(f"{path}\tmissing\n".encode())
    digest.update(np.ascontiguousarray(split.labels, dtype=np.int64).data)
    return digest.hexdigest()


@dataclass(frozen=True)
class _Plan:
    """What a cache holds: short sides resized to `size`, long sides cut to `longest`, and the
    source's fingerprint `key` (`fingerprint`)."""

    size: int
    longest: int
    key: str

    @classmethod
    def of(cls, split: Split, size: int, crop: int) -> _Plan:
        longest = long_side(size, crop)
        return cls(size, longest, fingerprint(split, size, longest))


def load_cached(
    split: Split,
    folder: Path,
    size: int,
    crop: int,
    *,
    on_bad_image: str = "skip",
    workers: int = 0,
    progress: bool = False,
) -> CachedSplit:
    """The split's cache in `folder`, built first when missing, stale or incomplete.

    Unreadable files are left out with one warning line each (`on_bad_image="error"`: the first
    stops the build, and a cache that left files out is refused); when an existing cache is
    used their count is repeated in one line. `workers` decoding processes; `progress`: a bar.
    """
    plan = _Plan.of(split, size, crop)
    cached = _open(folder, plan.key)
    if cached is not None:
        _check_skipped(cached, folder, on_bad_image, warn=True)
        return cached
    with _build_lock(folder):
        cached = _open(folder, plan.key)  # another process may have built it meanwhile
        if cached is None:
            _build(split, folder, plan, (on_bad_image, workers, progress))
            cached = _open(folder, plan.key)
            if cached is None:
                raise CondnetError(f"{folder}: the cache just written does not read back")
            return cached
    _check_skipped(cached, folder, on_bad_image, warn=True)
    return cached


def wait_for_cache(
    split: Split, folder: Path, size: int, crop: int, on_bad_image: str = "skip"
) -> CachedSplit:
    """The split's cache in `folder` once another process (DDP rank 0, `load_cached`) has
    built it: polling the folder, not a collective, so a long build cannot time out the
    process group."""
    key = _Plan.of(split, size, crop).key
    while (cached := _open(folder, key)) is None:
        time.sleep(1)
    _check_skipped(cached, folder, on_bad_image, warn=False)
    return cached


def _check_skipped(cached: CachedSplit, folder: Path, on_bad_image: str, warn: bool) -> None:
    """Refuse a cache that left files out under `on_bad_image="error"`; else (`warn`) say how
    many it left out."""
    if cached.skipped and on_bad_image == "error":  # left out by an earlier build
        raise CondnetError(
            f"{cached.skipped[0]} (data.on_bad_image=error; left out of the cache in {folder})"
        )
    if cached.skipped and warn:
        print(
            f"warning: {folder}: {len(cached.skipped)} unreadable images were left out "
            f"(listed in {MANIFEST})",
            file=sys.stderr,
        )


def _open(folder: Path, key: str) -> CachedSplit | None:
    """The cache in `folder` if it is current and complete: its manifest (written last) has
    fingerprint `key`, and every file reads back with the shapes the manifest gives."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest.get("fingerprint") != key:
            return None
        count, canvas = manifest["count"], tuple(manifest["canvas"])
        images = np.load(folder / "images.npy", mmap_mode="r")  # a short file fails here
        sizes, labels = np.load(folder / "sizes.npy"), np.load(folder / "labels.npy")
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        return None
    if images.shape[0] < count or images.shape[1:] != (*canvas, 3):
        return None
    if sizes.shape != (count, 2) or labels.shape != (count,):
        return None
    return CachedSplit(images[:count], sizes, labels, manifest["skipped"])


@contextlib.contextmanager
def _build_lock(folder: Path) -> Iterator[None]:
    """One builder per folder at a time; the kernel releases the lock when its holder dies."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _build(split: Split, folder: Path, plan: _Plan, how: tuple[str, int, bool]) -> None:
    """Write the cache's files, the manifest last, under the build lock (`how`: on_bad_image,
    workers, progress). Until the manifest is renamed into place the folder reads as
    incomplete, whatever stops the build (kill -9, a full disk, Ctrl-C); the next build
    removes what a killed one left."""
    on_bad_image, workers, progress = how
    (folder / MANIFEST).unlink(missing_ok=True)  # invalid from here until the new one is written
    fsync_dir(folder)
    for stale in folder.glob(".*.tmp"):  # a killed builder's files: no live builder holds the lock
        stale.unlink(missing_ok=True)
    canvas = _canvas(split, plan.size, plan.longest)
    decoded = tqdm(
        _decoded(split, plan.size, plan.longest, workers),
        total=len(split),
        disable=not progress,
        desc=f"caching {folder.name}",
        leave=False,
        dynamic_ncols=True,
    )
    try:
        sizes, kept, skipped = write_atomically(
            folder / "images.npy",
            partial(
                _decode_into,
                decoded=decoded,
                count=len(split),
                canvas=canvas,
                on_bad_image=on_bad_image,
            ),
        )
        labels = np.asarray(split.labels, dtype=np.int64)[kept]
        write_atomically(folder / "sizes.npy", partial(_save_npy, array=sizes))
        write_atomically(folder / "labels.npy", partial(_save_npy, array=labels))
        manifest = {
            "version": VERSION,
            "fingerprint": plan.key,
            "count": len(kept),
            "size": plan.size,
            "long_side": plan.longest,
            "canvas": list(canvas),
            "skipped": skipped,
        }
        text = json.dumps(manifest, indent=1)
        write_atomically(folder / MANIFEST, lambda tmp: Path(tmp).write_text(text))
    except OSError as err:
        raise CondnetError(
            f"{folder}: cannot write the cache ({err.strerror or err}); "
            "free space there or set data.cache to another folder"
        ) from None


def _decode_into(
    path: str,
    decoded: Iterable[np.ndarray | str],
    count: int,
    canvas: tuple[int, int],
    on_bad_image: str,
) -> tuple[np.ndarray, list[int], list[str]]:
    """Write the `count` `decoded` images to an images.npy at `path`, each on `canvas`; returns
    the kept images' sizes, their indices in the split, and the unreadable files' messages."""
    images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(count, *canvas, 3))
    _reserve(path)
    sizes, kept, skipped = np.zeros((count, 2), np.int64), [], []
    for index, image in enumerate(decoded):
        if isinstance(image, str):  # an unreadable file's message
            if on_bad_image == "error":
                raise CondnetError(f"{image} (data.on_bad_image=error)")
            print(f"warning: skipped {image}", file=sys.stderr)
            skipped.append(image)
            continue
        images[len(kept)] = _on_canvas(image, canvas)
        sizes[len(kept)] = image.shape[:2]
        kept.append(index)
    images.flush()
    return sizes[: len(kept)], kept, skipped


def _reserve(path: str) -> None:
    """Allocate the memory-mapped file's blocks now: on a full disk a write through the map
    kills the process with SIGBUS, while this fails first with ENOSPC."""
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            # A file system without fallocate: the blocks are allocated as they are written.


def _canvas(split: Split, size: int, longest: int) -> tuple[int, int]:
    if isinstance(split.images, np.ndarray):  # equal sizes: the first image's fitted size
        return tuple(_fit(split.images[:1], size, longest).shape[1:3])
    return longest, longest


def _decoded(split: Split, size: int, longest: int, workers: int) -> Iterator[np.ndarray | str]:
    """Each image fitted (H x W x 3 uint8), or an unreadable file's message, in order."""
    if isinstance(split.images, np.ndarray):
        for start in range(0, len(split), 1024):
            yield from _fit(split.images[start : start + 1024], size, longest)
        return
    decode = partial(_decode_file, size=size, longest=longest)
    if workers == 0:
        yield from map(decode, split.images)
        return
    # spawn: a forked child of a process that has run torch's OpenMP threads can hang.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=torch.set_num_threads, initargs=(1,)
    ) as pool:
        yield from pool.map(decode, split.images, chunksize=64)


def _decode_file(path: Path, size: int, longest: int) -> np.ndarray | str:
    try:
        image = load_rgb(path)
    except BadImage as err:
        return str(err)
    return _fit(np.asarray(image)[None], size, longest)[0]


def _fit(images: np.ndarray, size: int, longest: int) -> np.ndarray:
    """N x H x W x C uint8 (C = 1 or 3) -> short side `size`, long side at most `longest`, RGB."""
    batch = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2)  # a writable copy
    batch = TF.resize(batch.expand(-1, 3, -1, -1), [size], antialias=True)
    height, width = batch.shape[-2:]
    batch = TF.center_crop(batch, [min(height, longest), min(width, longest)])
    return batch.permute(0, 2, 3, 1).contiguous().numpy()


def _on_canvas(image: np.ndarray, canvas: tuple[int, int]) -> np.ndarray:
    """`image` at the top left; its last row and column repeated over the rest, so that
    bilinear sampling at its border reads its own pixels."""
    height, width = image.shape[:2]
    if (height, width) == canvas:
        return image
    return np.pad(image, ((0, canvas[0] - height), (0, canvas[1] - width), (0, 0)), mode="edge")


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would add ".npy" to a name
        np.save(f, array)
