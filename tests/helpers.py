"""Small fixtures shared by tests: tiny configs and on-disk data sets in every format."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from condnet.config import Config, from_dict
from condnet.data.cache import load_cached
from condnet.data.sources import Split
from condnet.data.tensor_loader import DeviceSplit
from condnet.engine.trainer import train

TINY_MODEL = {"widths": [8, 8, 16, 16, 24, 24], "repeats": 1, "head_channels": 32}
# A small real task: 1,024 Fashion-MNIST training images at 28 px, three epochs (chance: 10 %).
FASHION_SUBSET = {
    **{"data.source": "fashion-mnist", "data.train_subset": 1024, "data.val_subset": 500},
    **{"data.resize": 28, "data.crop": 24, "data.scale": [0.6, 1.0]},
    **{"train.epochs": 3, "train.lr_peak": 0.2},
}

# A synthetic task the tiny network learns in three epochs: 8 classes (chance: 12.5 %; top-5 can
# miss), 16 steps an epoch so that BatchNorm's running statistics keep up. The first epoch,
# still warming up, sits at chance; the next ones are far above it.
LEARNS = {"data.synthetic_classes": 8, "data.synthetic_images": 256, "train.batch_size": 16}


def load_benchmark(name: str):
    """The script `benchmarks/<name>.py` as a module (the folder is not a package)."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location(name, root / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def tiny_config(**overrides) -> Config:
    """A seconds-long run on synthetic data with a narrow network; override with dotted keys."""
    data = {
        "model": {"name": "paper-standard", "overrides": dict(TINY_MODEL)},
        "data": {
            "source": "synthetic",
            "synthetic_images": 192,
            "synthetic_classes": 4,
            "synthetic_size": 20,
            "resize": 20,
            "crop": 16,
            "scale": [0.5, 1.0],
        },
        "train": {
            "epochs": 3,
            "batch_size": 32,
            "eval_batch_size": 64,
            "warmup_epochs": 1,
            "lr_start": 0.01,
            "lr_peak": 0.1,
            "lr_final": 0.001,
        },
        "run": {"deterministic": True, "channels_last": False, "threads": 1},
    }
    return from_dict(data, overrides)


def tensor_config(tmp_path: Path, **overrides) -> Config:
    """`tiny_config` on the tensor pipeline, its cache under `tmp_path`."""
    return tiny_config(
        **{"data.pipeline": "tensor", "data.cache": str(tmp_path / "cache"), **overrides}
    )


def paper_data():
    """The data settings of the paper's sizes (resize 64, crop 56, its crop scales)."""
    return tiny_config(**{"data.resize": 64, "data.crop": 56, "data.scale": [0.08, 1.0]}).data


def array_split(count: int = 40, size: int = 64, seed: int = 0, classes: int = 4) -> Split:
    """`count` random RGB images of `size` x `size` in memory, labelled 0, 1, ... in turn."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    return Split(images, np.arange(count) % classes, [f"c{i}" for i in range(classes)])


def device_split(split: Split, folder: Path, size: int = 64, crop: int = 56) -> DeviceSplit:
    """`split` through the cache in `folder`, on the CPU as the tensor pipeline holds it."""
    return DeviceSplit.from_cache(load_cached(split, folder, size, crop), torch.device("cpu"))


def torchrun_train(config: Path, out: Path, port: int) -> list[str]:
    """The command line of `condnet train --config CONFIG --out OUT` in two processes under
    torchrun (gloo on the CPU), rendezvous on `port`."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    condnet = ["-m", "condnet.cli", "train", "--config", str(config), "--out", str(out)]
    return [*torchrun, f"--master_port={port}", *condnet]


def tiny_array_split() -> Split:
    """Twelve 16 x 16 RGB images in memory, three classes."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    return Split(images, np.arange(12) % 3, ["a", "b", "c"])


def write_imagefolder(root: Path, classes=("cat", "dog", "fish"), per_class: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (40 + 3 * i, 50, 3), dtype=np.uint8)
                pixels[..., c % 3] = 250
                ext = ".JPEG" if i % 2 else ".png"
                Image.fromarray(pixels).save(folder / f"{i}{ext}")
    return root


def plain_folder(root: Path, classes=("cat", "dog", "fish"), per_class: int = 10) -> Path:
    """ROOT/<class>/<image>: a folder of class folders, as a newcomer has it."""
    write_imagefolder(root / "tmp", classes, per_class)
    (root / "tmp" / "train").rename(root / "plain")
    return root / "plain"


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_imagenet64(
    root: Path, labels_per_batch=((1, 2, 3, 5), (2, 5, 7)), npz: bool = False, side: int = 64
) -> Path:
    """Down-sampled ImageNet batches (`train_data_batch_<i>`, `val_data`) of random pixels: each
    row holds the red, green and blue planes of a `side` x `side` image, row-major."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def batch(labels):
        data = rng.integers(0, 256, (len(labels), 3 * side * side), dtype=np.uint8)
        return {"data": data, "labels": list(labels), "mean": np.zeros(3 * side * side)}

    for i, labels in enumerate(labels_per_batch, 1):
        write_batch(root / f"train_data_batch_{i}", batch(labels), npz)
    write_batch(root / "val_data", batch((5, 2, 9)), npz)
    return root


def write_batch(path: Path, batch: dict, npz: bool) -> None:
    if npz:
        np.savez(path.with_suffix(".npz"), data=batch["data"], labels=np.array(batch["labels"]))
    else:
        path.write_bytes(pickle.dumps(batch, protocol=2))


def write_cifar(root: Path, num_classes: int = 10, python2: bool = True) -> Path:
    """CIFAR-10's or CIFAR-100's python batch folder with random 32 x 32 images (rows of red,
    green and blue planes); returns `root`. `python2`: pickled as the real files are, by
    Python 2 (`python2_pickle`); else by Python 3's pickle, protocol 2."""
    ten = num_classes == 10
    folder = root / ("cifar-10-batches-py" if ten else "cifar-100-python")
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    dumps = python2_pickle if python2 else lambda obj: pickle.dumps(obj, protocol=2)
    names = [f"c{i}" for i in range(num_classes)]
    meta = {"label_names" if ten else "fine_label_names": names}
    (folder / ("batches.meta" if ten else "meta")).write_bytes(dumps(meta))
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if ten else ["train", "test"]
    for name in files:
        labels = rng.integers(0, num_classes, 6).tolist()
        batch = {
            "batch_label": f"{name} of the test set",
            "labels" if ten else "fine_labels": labels,
        }
        batch["data"] = rng.integers(0, 256, (6, 3072), dtype=np.uint8)
        (folder / name).write_bytes(dumps(batch))
    return root


def python2_pickle(obj) -> bytes:
    """`obj` pickled as Python 2 with NumPy 1 pickled CIFAR's batches (protocol 2): each str as
    a byte string (SHORT_BINSTRING), which Python 3 reads back only with encoding="latin1",
    and each uint8 array rebuilt by `numpy.core.multiarray._reconstruct` from a byte string
    of its data. Takes dicts, lists, tuples, str, int, bool, None and uint8 arrays."""
    out = bytearray(b"\x80\x02")

    def string(data: bytes) -> None:
        if len(data) < 256:
            out.extend(b"U" + bytes([len(data)]))
        else:
            out.extend(b"T" + struct.pack("<i", len(data)))
        out.extend(data)

    def write(x) -> None:
        if isinstance(x, bool):
            out.extend(b"\x88" if x else b"\x89")
        elif isinstance(x, int):
            out.extend(b"J" + struct.pack("<i", x))
        elif isinstance(x, str):
            string(x.encode("latin1"))
        elif x is None:
            out.extend(b"N")
        elif isinstance(x, (list, tuple)):
            out.extend(b"](" if isinstance(x, list) else b"(")
            for item in x:
                write(item)
            out.extend(b"e" if isinstance(x, list) else b"t")
        elif isinstance(x, dict):
            out.extend(b"}(")
            for key, value in x.items():
                write(key)
                write(value)
            out.extend(b"u")
        elif isinstance(x, np.ndarray) and x.dtype == np.uint8:
            # _reconstruct(ndarray, (0,), "b"), then its state: (1, shape, dtype, False, data).
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n")
            write((0,))
            string(b"b")
            out.extend(b"tR(")
            write(1)
            write(tuple(x.shape))
            out.extend(b"cnumpy\ndtype\n")
            write(("u1", 0, 1))
            out.extend(b"R")
            write((3, "|", None, None, None, -1, -1, 0))
            out.extend(b"b")
            write(False)
            string(np.ascontiguousarray(x).tobytes())
            out.extend(b"tb")
        else:
            raise TypeError(f"python2_pickle: cannot write {type(x).__name__}")

    write(obj)
    return bytes(out + b".")


def png_declaring(path: Path, width: int, height: int) -> None:
    """A small PNG whose header declares `width` x `height` pixels (its data is far shorter):
    a decompression bomb."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    path.write_bytes(bytes(data))


def write_odd_images(folder: Path) -> list[Path]:
    """Valid images in every awkward mode; returns their paths."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))
    files = {
        "alpha.png": rgb.convert("RGBA"),
        "palette.png": rgb.convert("P"),
        "cmyk.jpg": rgb.convert("CMYK"),
        "gray.png": rgb.convert("L"),
        "tiny.png": rgb.resize((10, 10)),
        "deep.png": Image.fromarray((rng.integers(0, 65535, (30, 40))).astype(np.uint16)),
        "photo.webp": rgb,
        "photo.bmp": rgb,
    }
    for name, img in files.items():
        img.save(folder / name)
    return [folder / n for n in files]


def write_bad_images(folder: Path) -> list[Path]:
    good = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(good, format="JPEG")
    (folder / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image\n")
    png_declaring(folder / "bomb.png", 100_000, 100_000)
    return [folder / n for n in ("truncated.jpg", "empty.jpg", "text.jpg", "bomb.png")]


def image_config(root: Path, **overrides):
    return tiny_config(
        **{
            "data.source": "imagefolder",
            "data.root": str(root),
            "data.resize": 20,
            "train.epochs": 1,
            **overrides,
        }
    )


def small_run(tmp_path: Path, **overrides) -> Path:
    train(tiny_config(**{"train.epochs": 1, **overrides}), tmp_path / "run", progress=False)
    return tmp_path / "run"


# Structured images for the crop tests: every pixel says where it is, so a crop's position,
# size and mirroring can be read back from its pixels (noise would look alike from anywhere).
STEP = 4  # coordinate units per pixel: coordinates up to 63 fit in uint8


def coordinate_images(count: int, height: int, width: int) -> np.ndarray:
    """N x H x W x 3 uint8: red 4 x row, green 4 x column, blue the image's index (mod 256)."""
    rows = np.arange(height)[:, None].repeat(width, 1)
    cols = np.arange(width)[None, :].repeat(height, 0)
    planes = [STEP * rows, STEP * cols]
    image = np.stack(planes, -1)[None].repeat(count, 0)
    index = np.broadcast_to(np.arange(count)[:, None, None, None], (count, height, width, 1))
    return np.concatenate([image, index], -1).astype(np.uint8)


def sampled_at(start: float, length: float, crop: int, size: int, flip: bool) -> np.ndarray:
    """The coordinates that output pixels 0 .. crop-1 sample along one axis, when the box
    [start, start + length) of an image `size` pixels long is resized to `crop` pixels: pixel
    centres map onto pixel centres (align_corners=False), positions beyond the image take its
    edge pixel, and a flip reverses the order. Bilinear sampling of a coordinate ramp returns
    exactly these coordinates."""
    u = np.arange(crop)
    x = np.clip(start + (u + 0.5) * length / crop - 0.5, 0, size - 1)
    return x[::-1] if flip else x


def boxes_read_back(crops: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The box (top, left, height, width) each crop of `coordinate_images` was taken from, and
    whether it was mirrored, read from the coordinates its two middle rows and columns hold
    (`crops`: N x 3 x C x C, pixel values in [0, 1]). The middle pixels sample inside the
    box's image whatever the box, so nothing there is clamped to an edge."""
    values = crops.double().cpu().numpy() * 255 / STEP
    crop = values.shape[-1]
    mid = crop // 2
    rows, cols = values[:, 0, :, mid], values[:, 1, mid, :]
    flip = cols[:, mid] < cols[:, mid - 1]
    cols = np.where(flip[:, None], cols[:, ::-1], cols)
    boxes = []
    for axis in (rows, cols):
        length = (axis[:, mid] - axis[:, mid - 1]) * crop
        start = axis[:, mid] - (mid + 0.5) * length / crop + 0.5
        boxes.append((start, length))
    (top, height), (left, width) = boxes
    return np.stack([top, left, height, width], 1), flip
