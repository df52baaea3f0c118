"""Readers for each on-disk format; each returns a train and a validation `Split`."""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from condnet.data.images import IMAGE_EXTENSIONS, is_image_file
from condnet.data.safe_pickle import load_pickle
from condnet.errors import CondnetError

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


@dataclass
class Split:
    """One split: `images` is an N x H x W x C uint8 array (C = 1 or 3) or a list of files."""

    images: np.ndarray | list[Path]
    labels: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: np.ndarray) -> Split:
        images = (
            self.images[indices]
            if isinstance(self.images, np.ndarray)
            else [self.images[i] for i in indices]
        )
        return Split(images, self.labels[indices], self.class_names)


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise CondnetError(f"{what} not found: expected a folder at {path}")
    return path


# --- imagefolder: ROOT/{train,val}/<class>/<image> -------------------------------------------


def _class_files(split_dir: Path) -> dict[str, list[Path]]:
    stray = sorted(p.name for p in split_dir.iterdir() if p.is_file())
    if stray:
        raise CondnetError(
            f"{split_dir}: files at the top ({stray[0]}, ...); expected one folder per class"
        )
    classes = {}
    for folder in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.rglob("*") if is_image_file(p))
        if not files:
            raise CondnetError(
                f"{folder}: empty class folder; expected images ({', '.join(IMAGE_EXTENSIONS)})"
            )
        classes[folder.name] = files
    if not classes:
        raise CondnetError(
            f"{split_dir}: no class folders; expected {split_dir}/<class>/<image> "
            "(or train/<class>/<image> and val/<class>/<image>)"
        )
    return classes


def read_imagefolder(root: Path) -> tuple[Split, Split | None]:
    """ROOT/train/<class>/* and ROOT/val/<class>/*, or a plain folder of class folders,
    ROOT/<class>/*, which has no validation split of its own (None)."""
    _need_dir(root, "data folder")
    if not (root / "train").exists():
        classes = _class_files(root)
        return _file_split(classes, list(classes)), None
    train = _class_files(_need_dir(root / "train", "training folder"))
    val = _class_files(_need_dir(root / "val", "validation folder"))
    unknown = sorted(set(val) - set(train))
    if unknown:
        raise CondnetError(f"{root}/val: class {unknown[0]!r} is not in {root}/train")
    names = list(train)
    return _file_split(train, names), _file_split(val, names)


def _file_split(classes: dict[str, list[Path]], names: list[str]) -> Split:
    files = [f for name in classes for f in classes[name]]
    labels = np.array([names.index(n) for n in classes for _ in classes[n]], dtype=np.int64)
    return Split(files, labels, names)


# --- imagenet64: pickled or .npz batches, 1-based labels, a class-list file ------------------


def read_class_list(path: Path) -> tuple[list[int], list[str]]:
    """1-based labels, one per line (an optional name may follow); blanks and # comments ignored."""
    if not path.is_file():
        raise CondnetError(f"class-list file not found: {path}")
    labels, names = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        first, _, rest = text.partition(" ")
        if not first.isdigit() or int(first) < 1:
            raise CondnetError(f"{path}:{number}: expected a 1-based class label, got {first!r}")
        if int(first) in labels:
            raise CondnetError(f"{path}:{number}: class {first} is listed twice")
        labels.append(int(first))
        names.append(rest.strip() or f"class {first}")
    if not labels:
        raise CondnetError(f"{path}: no classes listed")
    return labels, names


def _load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as batch:
                data, labels = batch["data"], batch["labels"]
        except (ValueError, KeyError, OSError) as err:
            raise CondnetError(f"{path}: not a readable .npz batch ({err})") from None
    else:
        batch = load_pickle(path)
        if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
            raise CondnetError(f"{path}: expected a dict with 'data' and 'labels'")
        data, labels = batch["data"], batch["labels"]
    data = np.asarray(data, dtype=np.uint8)
    side = int(round((data.shape[1] / 3) ** 0.5))
    images = data.reshape(-1, 3, side, side).transpose(0, 2, 3, 1)
    return images, np.asarray(labels, dtype=np.int64)


def _find_batches(root: Path, stem: str) -> list[Path]:
    found = sorted(
        p
        for p in root.iterdir()
        if p.name == stem or p.name.startswith(stem) and p.suffix in ("", ".npz", ".pkl", ".pickle")
    )
    if not found:
        raise CondnetError(f"{root}: no {stem}* batches; expected the Imagenet64x64 files")
    return found


def _wanted_rows(paths: list[Path], lookup: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The images of the wanted classes in `paths`, and their labels mapped through `lookup`
    (-1: not wanted), read one batch at a time: the peak is one batch plus what is kept."""
    parts, labels = [], []
    for path in paths:
        images, original = _load_batch(path)
        mapped = np.where(original < len(lookup), lookup[np.minimum(original, len(lookup) - 1)], -1)
        keep = mapped >= 0
        parts.append(images[keep])  # a copy of the kept rows; the batch is freed next round
        labels.append(mapped[keep])
        del images  # else the next batch is read while this one is still held
    return _concatenate_freeing(parts), np.concatenate(labels)


def _concatenate_freeing(parts: list[np.ndarray]) -> np.ndarray:
    """`np.concatenate(parts)`, emptying `parts` as it goes: each part is freed once copied, and
    the result's pages are only touched as they are filled, so the resident peak stays near
    the total rather than twice it."""
    out = np.empty((sum(len(p) for p in parts), *parts[0].shape[1:]), dtype=parts[0].dtype)
    start = 0
    while parts:
        part = parts.pop(0)
        out[start : start + len(part)] = part
        start += len(part)
        del part
    return out


def read_imagenet64(root: Path, classes: Path | None) -> tuple[Split, Split]:
    if classes is None:
        raise CondnetError("data.classes: imagenet64 needs a class-list file (one label a line)")
    wanted, names = read_class_list(Path(classes))
    _need_dir(root, "imagenet64 folder")
    lookup = np.full(max(wanted) + 1, -1, dtype=np.int64)
    lookup[wanted] = np.arange(len(wanted))

    def split(stem: str) -> Split:
        images, labels = _wanted_rows(_find_batches(root, stem), lookup)
        return Split(images, labels, names)

    train, val = split("train_data_batch"), split("val_data")
    missing = sorted(set(range(len(wanted))) - set(train.labels.tolist()))
    if missing:
        raise CondnetError(
            f"{classes}: class {wanted[missing[0]]} has no training images in {root}"
        )
    return train, val


# --- CIFAR-10/100: python pickle batch folders ------------------------------------------------


def read_cifar(root: Path, num_classes: int, download: bool) -> tuple[Split, Split]:
    folder = root / ("cifar-10-batches-py" if num_classes == 10 else "cifar-100-python")
    if not folder.is_dir() and download:
        _download_cifar(root, num_classes)
    _need_dir(folder, f"CIFAR-{num_classes} folder (set data.download=true to fetch it)")
    if num_classes == 10:
        meta, key = load_pickle(folder / "batches.meta"), "label_names"
        train_files = [folder / f"data_batch_{i}" for i in range(1, 6)]
        test_files, label_key = [folder / "test_batch"], "labels"
    else:
        meta, key = load_pickle(folder / "meta"), "fine_label_names"
        train_files, test_files, label_key = [folder / "train"], [folder / "test"], "fine_labels"
    names = [n.decode() if isinstance(n, bytes) else n for n in meta[key]]

    def split(files: list[Path]) -> Split:
        batches = [load_pickle(f) for f in files]
        data = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
        labels = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
        return Split(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels, names)

    return split(train_files), split(test_files)


def _download_cifar(root: Path, num_classes: int) -> None:
    """Fetch and unpack the CIFAR archive (its MD5 checked) without reading it: torchvision's
    dataset class would unpickle the batches with plain `pickle`; `read_cifar` reads them with
    the restricted unpickler, like local ones."""
    from torchvision.datasets import CIFAR10, CIFAR100, utils

    dataset = CIFAR10 if num_classes == 10 else CIFAR100
    try:
        utils.download_and_extract_archive(
            dataset.url, str(root), filename=dataset.filename, md5=dataset.tgz_md5
        )
    except (OSError, RuntimeError) as err:  # no network, a full disk, a corrupted archive
        raise CondnetError(
            f"data.download: cannot fetch {dataset.url} into {root} ({err})"
        ) from None


# --- Fashion-MNIST: IDX files (optionally gzipped) --------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (unsigned bytes), from `path` or `path.gz`."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            zero, dtype, ndim = struct.unpack(">HBB", f.read(4))
            if zero != 0 or dtype != 0x08:
                raise CondnetError(f"{path}: not an unsigned-byte IDX file")
            shape = struct.unpack(f">{ndim}I", f.read(4 * ndim))
            data = np.frombuffer(f.read(), dtype=np.uint8).copy()
    except (OSError, struct.error, EOFError) as err:
        raise CondnetError(f"{path}: not a readable IDX file ({err})") from None
    if data.size != int(np.prod(shape)):
        raise CondnetError(
            f"{path}: truncated IDX file ({data.size} of {int(np.prod(shape))} values)"
        )
    return data.reshape(shape)


def _idx_file(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise CondnetError(
        f"{root}: {stem}[.gz] not found; install Debian's dataset-fashion-mnist or set data.root"
    )


def read_fashion_mnist(root: Path) -> tuple[Split, Split]:
    def split(prefix: str) -> Split:
        images = read_idx(_idx_file(root, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_idx_file(root, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
        return Split(images[..., None], labels, list(FASHION_MNIST_CLASSES))

    return split("train"), split("t10k")


# --- synthetic: learnable generated images ----------------------------------------------------


def make_synthetic(images: int, classes: int, size: int, seed: int) -> tuple[Split, Split]:
    """Each class is a noisy colour-and-stripe pattern; a small network can learn it."""
    rng = np.random.default_rng(seed)
    colours = rng.uniform(40, 215, size=(classes, 3))
    freq = rng.uniform(0.5, 3.0, size=classes)
    coords = np.linspace(0, 2 * np.pi, size)

    def split(n: int) -> Split:
        labels = np.arange(n, dtype=np.int64) % classes
        rng.shuffle(labels)
        stripes = np.sin(freq[labels, None] * coords[None, :])[:, None, :, None] * 40
        noise = rng.normal(0, 20, size=(n, size, size, 3))
        pixels = colours[labels][:, None, None, :] + stripes + noise
        return Split(
            np.clip(pixels, 0, 255).astype(np.uint8), labels, [f"class {i}" for i in range(classes)]
        )

    return split(images), split(max(classes, images // 4))
