"""Each pipeline's loaders in the one training loop (`condnet.engine.loaders`), here
data.pipeline=tensor."""

import pytest
import torch

from condnet.config import load_config
from condnet.engine.checkpoint import load_checkpoint
from condnet.engine.distributed import Dist
from condnet.engine.loaders import train_loader
from condnet.engine.runtime import Runtime, seed_epoch
from condnet.engine.trainer import resume_config, train
from condnet.errors import CondnetError
from tests.helpers import (
    FASHION_SUBSET,
    array_split,
    device_split,
    tensor_config,
    tiny_config,
    write_imagefolder,
)


def test_training_batches_have_one_shape_and_channels_last(tmp_path):
    cfg = tiny_config(**{"data.resize": 64, "data.crop": 56, "train.batch_size": 16})
    rt = Runtime(torch.device("cpu"), Dist(), amp=False, channels_last=True)
    split = device_split(array_split(count=40), tmp_path)
    loader = train_loader(cfg, split, rt, 0, seed_epoch(0, 0, 0))
    batches = list(loader)
    assert len(loader) == len(batches) == 2
    for images, labels, skipped in batches:
        assert images.shape == (16, 3, 56, 56) and labels.shape == (16,) and skipped == []
        assert images.is_contiguous(memory_format=torch.channels_last)
    again = list(train_loader(cfg, split, rt, 0, seed_epoch(0, 0, 0)))  # an epoch replays exactly
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))


def test_pipeline_is_validated():
    with pytest.raises(CondnetError, match="data.pipeline: expected one of torchvision, tensor"):
        load_config(None, {"data.pipeline": "dali"})
    with pytest.raises(CondnetError, match="run.compile_mode: expected one of default"):
        load_config(None, {"run.compile_mode": "fast"})
    assert load_config(None).data.pipeline == "torchvision"


def test_tensor_pipeline_learns_a_small_real_subset(tmp_path):
    cfg = tensor_config(tmp_path, **FASHION_SUBSET)
    metrics = train(cfg, tmp_path / "run", progress=False)
    assert metrics[-1]["val_top1"] > 50  # chance is 10 %
    assert metrics[-1]["skipped_images"] == 0


def test_tensor_pipeline_resume_is_bit_identical(tmp_path):
    cfg = tensor_config(tmp_path)
    train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "part", progress=False, stop_after=1)
    train(resume_config(tmp_path / "part"), tmp_path / "part", resume=True, progress=False)
    full = load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    part = load_checkpoint(tmp_path / "part" / "last.pt")["model"]
    assert all(torch.equal(full[k], part[k]) for k in full)


def test_unreadable_files_are_counted_each_epoch(tmp_path, capfd):
    root = write_imagefolder(tmp_path / "data", per_class=6)
    (root / "train" / "dog" / "empty.jpg").write_bytes(b"")
    cfg = tensor_config(
        tmp_path,
        **{
            "data.source": "imagefolder",
            "data.root": str(root),
            "data.resize": 20,
            "train.epochs": 2,
            "train.batch_size": 8,
        },
    )
    metrics = train(cfg, tmp_path / "run", progress=False)
    assert [m["skipped_images"] for m in metrics] == [1, 1]
    assert sum("empty.jpg" in line for line in capfd.readouterr().err.splitlines()) == 1
