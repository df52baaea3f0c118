"""Build the paper's 64-px layout from a full ImageNet tree (the README's Training section).

SRC/{train,val}/<class>/<image> -> DST/{train,val}/<class>/<image>, short side resized to 64,
only the classes named in the class file. Parallel, resumable (existing outputs are skipped,
and every output is written atomically: `condnet.files.write_atomically`), with a progress bar.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from condnet.data.images import BadImage, is_image_file, load_rgb
from condnet.errors import CondnetError
from condnet.files import write_atomically


def read_class_names(path: Path) -> list[str]:
    """Class folder names (e.g. WordNet ids), one a line; blanks and # comments ignored."""
    if not path.is_file():
        raise CondnetError(f"class file not found: {path}")
    names = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    names = [n for n in names if n]
    if not names:
        raise CondnetError(f"{path}: no classes listed")
    return names


def plan(src: Path, dst: Path, classes: list[str]) -> tuple[list[tuple[Path, Path]], int]:
    """(source, destination) pairs still to be written, and how many are already there."""
    jobs, done = [], 0
    for split in ("train", "val"):
        for name in classes:
            folder = src / split / name
            if not folder.is_dir():
                raise CondnetError(
                    f"{folder}: class {name!r} not found; expected SRC/{split}/<class>/"
                )
            for path in sorted(p for p in folder.iterdir() if is_image_file(p)):
                target = dst / split / name / (path.stem + ".png")
                if target.exists():
                    done += 1
                else:
                    jobs.append((path, target))
    return jobs, done


def resize_short_side(image: Image.Image, size: int) -> Image.Image:
    scale = size / min(image.size)
    new = (max(size, round(image.width * scale)), max(size, round(image.height * scale)))
    return image.resize(new, Image.Resampling.BICUBIC, reducing_gap=3.0)


def convert_one(job: tuple[Path, Path], size: int = 64) -> str | None:
    """Write one resized image; returns an error line instead of raising."""
    source, target = job
    try:
        image = resize_short_side(load_rgb(source), size)
    except BadImage as err:
        return str(err)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(target, lambda tmp: image.save(tmp, format="PNG"))
    return None


def prepare_imagenet(
    src: Path, dst: Path, classes_file: Path, *, workers: int = 0, size: int = 64
) -> dict:
    """Convert what is missing; returns counts of written, skipped (already there) and failed."""
    if size < 1:
        raise CondnetError(f"--size: expected a positive number of pixels, got {size}")
    if not src.is_dir():
        raise CondnetError(f"source not found: {src} (expected SRC/train and SRC/val)")
    jobs, done = plan(src, dst, read_class_names(classes_file))
    failed = []
    workers = workers or os.cpu_count() or 1
    with ProcessPoolExecutor(workers) as pool:
        results = pool.map(convert_one, jobs, [size] * len(jobs), chunksize=64)
        for error in tqdm(
            results, total=len(jobs), desc="prepare", disable=not sys.stderr.isatty()
        ):
            if error:
                print(f"warning: skipped {error}", file=sys.stderr)
                failed.append(error)
    return {"written": len(jobs) - len(failed), "skipped": done, "failed": len(failed)}
