"""ONNX: export a model (BN folded, dynamic batch axis), run it in ONNX Runtime, check parity.

CondConv layers are exported in their ``batched`` formulation (see `condnet.models.condconv`),
whose shapes do not depend on the batch size, so one file serves every batch size. The class
names and eval transform travel in the file's ``metadata_props``. The TorchScript exporter is
used: it exports these networks exactly, in about a second, where the dynamo exporter takes
ten times longer.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from condnet.choices import CHECK_BATCHES, OPSET
from condnet.deploy.bundle import Bundle
from condnet.deploy.fuse import fuse
from condnet.deploy.onnx_model import INPUT_NAME, OUTPUT_NAME, OnnxModel, require
from condnet.files import write_atomically
from condnet.models import NetSpec
from condnet.models.condconv import set_formulation


def deployable(model: nn.Module) -> nn.Module:
    """The inference form of `model`: BN folded, CondConvs in the batch-independent formulation."""
    return set_formulation(fuse(model), "batched")


def export_onnx(bundle: Bundle, path: str | os.PathLike, opset: int = OPSET) -> None:
    """Write `bundle` as an ONNX file with a dynamic batch axis and condnet metadata."""
    onnx = require("onnx")
    model, crop = deployable(bundle.model), bundle.transform.crop
    example = torch.zeros(2, model.spec.in_channels, crop, crop)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter announces its deprecation on every call.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in bundle.metadata().items():
        proto.metadata_props.add(key=key, value=value)
    write_atomically(path, lambda tmp: onnx.save(proto, tmp))


class OnnxClassifier(OnnxModel):
    """`OnnxModel` with torch tensors in and out, and the network's spec (`NetSpec`)."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu") -> None:
        super().__init__(path, device)
        self.spec = NetSpec.from_dict(self.spec_data)

    def __call__(self, images: Tensor) -> Tensor:
        return torch.from_numpy(super().__call__(images.detach().cpu().numpy()))


@torch.no_grad()
def check_onnx(
    path: str | os.PathLike,
    reference: nn.Module,
    batches: Sequence[int] = CHECK_BATCHES,
    seed: int = 0,
) -> dict[int, float]:
    """Max abs logit difference between ONNX Runtime and `reference` per batch size.

    Inputs are standard-normal images of the file's crop size, from a seeded generator.
    """
    classifier = OnnxClassifier(path)
    reference = reference.eval()
    generator = torch.Generator().manual_seed(seed)
    crop, channels = classifier.transform.crop, classifier.spec.in_channels
    differences = {}
    for batch in batches:
        images = torch.randn(batch, channels, crop, crop, generator=generator)
        got, want = classifier(images), reference(images)
        differences[batch] = (got - want).abs().max().item()
    return differences
