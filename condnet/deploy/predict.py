"""Classify image files with a checkpoint, a safetensors weights file or an ONNX file.

Images are decoded to RGB whatever their format and mode (`condnet.data.images.load_rgb`),
passed through the model's eval transform (Pillow and NumPy: `TransformSpec.to_array`) and
classified in batches, with an ONNX file without importing torch; directories are read
recursively in sorted order, one batch in memory at a time. A file that cannot be decoded
becomes a `Failure` in the stream of results instead of stopping the run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from condnet.data.images import IMAGE_EXTENSIONS, MAX_PIXELS, BadImage, load_rgb
from condnet.data.transform_spec import TransformSpec
from condnet.errors import CondnetError

ONNX_SUFFIX = ".onnx"


@dataclass(frozen=True)
class Classifier:
    """A batch of normalised images -> logits (NumPy arrays), with the class names and eval
    transform."""

    logits: Callable[[np.ndarray], np.ndarray]
    class_names: list[str]
    transform: TransformSpec


@dataclass(frozen=True)
class Prediction:
    """The `topk` most probable classes of one image, best first."""

    path: str
    top: list[tuple[int, str, float]]  # (class index, class name, probability)

    def to_dict(self) -> dict[str, Any]:
        top = [{"index": i, "class": name, "probability": p} for i, name, p in self.top]
        return {"path": self.path, "top": top}


@dataclass(frozen=True)
class Failure:
    """An input that could not be classified; `reason` names the file."""

    path: str
    reason: str


def load_classifier(path: str | os.PathLike, device: str = "cpu") -> Classifier:
    """A `Classifier` from a ``.onnx`` file (ONNX Runtime, no torch), a ``.safetensors`` file
    or a checkpoint, run on `device` (``cpu`` or ``cuda``)."""
    if Path(path).suffix == ONNX_SUFFIX:
        from condnet.deploy.onnx_model import OnnxModel  # needs the optional onnxruntime

        model = OnnxModel(path, device)
        classifier = Classifier(model, model.class_names, model.transform)
        in_channels = model.in_channels
    else:
        classifier, in_channels = _torch_classifier(path, device)
    if in_channels != 3:
        raise CondnetError(f"{path}: the model takes {in_channels} input channels; images are RGB")
    return classifier


def _torch_classifier(path: str | os.PathLike, device: str) -> tuple[Classifier, int]:
    import torch

    from condnet.deploy.inference import prepare_inference
    from condnet.deploy.model_file import read_bundle

    if device == "cuda" and not torch.cuda.is_available():
        raise CondnetError("--device cuda: no CUDA device is available")
    bundle = read_bundle(path)
    model = prepare_inference(bundle.model).to(device)

    def logits(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(images).to(device)).float().cpu().numpy()

    classifier = Classifier(logits, bundle.class_names, bundle.transform)
    return classifier, bundle.model.spec.in_channels


def find_images(inputs: Iterable[str | os.PathLike]) -> Iterator[Path | Failure]:
    """Each input file as given; each folder's image files, recursively, each folder sorted by
    name; a `Failure` for a folder that cannot be listed."""
    for item in inputs:
        path = Path(item)
        yield from _walk(path) if path.is_dir() else (path,)


def _walk(folder: Path) -> Iterator[Path | Failure]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as err:
        yield Failure(str(folder), f"{folder}: cannot list the folder ({err.strerror})")
        return
    for entry in entries:
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(path)
        elif path.suffix.lower() in IMAGE_EXTENSIONS and entry.is_file():
            yield path


def predict(
    classifier: Classifier,
    inputs: Iterable[str | os.PathLike],
    topk: int = 5,
    batch_size: int = 32,
) -> Iterator[Prediction | Failure]:
    """Classify every image found in `inputs`, in order, `batch_size` images at a time."""
    if topk < 1 or batch_size < 1:
        raise CondnetError(f"topk and batch_size must be positive, got {topk} and {batch_size}")
    spec = classifier.transform
    found = find_images(inputs)
    while chunk := list(islice(found, batch_size)):
        decoded = [_decode(item, spec) for item in chunk]
        images = [item for item in decoded if isinstance(item, np.ndarray)]
        tops = iter(_top(classifier, np.stack(images), topk) if images else [])
        for path, item in zip(chunk, decoded, strict=True):
            yield item if isinstance(item, Failure) else Prediction(str(path), next(tops))


def _decode(item: Path | Failure, spec: TransformSpec) -> np.ndarray | Failure:
    if isinstance(item, Failure):
        return item
    try:
        image = load_rgb(item)
    except BadImage as err:
        return Failure(str(item), str(err))
    # Resizing the short side of a long thin image can need far more memory than decoding it.
    long_side = max(image.size) * spec.resize / min(image.size)
    if long_side * spec.resize > MAX_PIXELS:
        width, height = image.size
        return Failure(str(item), f"{item}: {width}x{height} pixels is too elongated to resize")
    return spec.to_array(image)


def _top(classifier: Classifier, images: np.ndarray, topk: int) -> list[list[tuple]]:
    """Per image, the `topk` (index, name, probability), best first (softmax in float64)."""
    logits = classifier.logits(images).astype(np.float64)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    k = min(topk, probabilities.shape[1])
    indices = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    names = classifier.class_names
    return [
        [(int(i), names[int(i)], float(row[i])) for i in order]
        for order, row in zip(indices, probabilities, strict=True)
    ]


def format_prediction(prediction: Prediction) -> str:
    """The path, then one line per class: probability and name."""
    lines = [prediction.path]
    lines += [f"  {p:8.4f}  {name}" for _, name, p in prediction.top]
    return "\n".join(lines)
