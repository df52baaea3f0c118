"""Each pipeline's loaders in the one training loop (`condnet.engine.loaders`), mostly
data.pipeline=tensor."""

import pytest
import torch

from condnet.config import load_config
from condnet.engine.checkpoint import load_checkpoint
from condnet.engine.distributed import Dist
from condnet.engine.evaluation import evaluate
from condnet.engine.loaders import eval_loader, split_data, train_loader
from condnet.engine.runtime import Runtime, seed_epoch
from condnet.engine.trainer import build_network, resume_config, train
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


@pytest.mark.parametrize("pipeline", ["torchvision", "tensor"])
def test_order_and_augmentation_change_every_epoch_and_replay_exactly(tmp_path, pipeline):
    cfg = tiny_config(**{"data.pipeline": pipeline, "data.resize": 20, "train.batch_size": 8})
    rt = Runtime(torch.device("cpu"), Dist(), amp=False, channels_last=False)
    split = array_split(count=32, size=20, classes=32)  # each image its own label
    if pipeline == "tensor":
        data = device_split(split, tmp_path, 20, 16)
    else:
        data = split_data(cfg, rt, split, "train")

    def epoch(number: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The epoch's order (labels as drawn) and its augmented images, by label."""
        batches = list(train_loader(cfg, data, rt, number, seed_epoch(0, number, 0)))
        order = torch.cat([labels for _, labels, _ in batches])
        return order, torch.cat([images for images, _, _ in batches])[order.argsort()]

    (order0, images0), (order1, images1) = epoch(0), epoch(1)
    assert sorted(order0.tolist()) == sorted(order1.tolist()) == list(range(32))
    assert not torch.equal(order0, order1)
    assert ((images0 - images1).flatten(1).abs().amax(1) > 0.1).all()  # every image anew
    replay_order, replay_images = epoch(1)
    assert torch.equal(replay_order, order1) and torch.equal(replay_images, images1)


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


def test_compiled_torchvision_evaluation_pads_every_batch_to_one_shape():
    """With run.compile the torchvision pipeline's last evaluation batch is padded (rows
    labelled -100), so a compiled network sees one shape; the results are the unpadded ones."""
    from condnet.data.datasets import load_splits

    eager = tiny_config(**{"train.eval_batch_size": 20, "model.name": "paper-condconv"})
    compiled = tiny_config(**{"train.eval_batch_size": 20, "run.compile": True})
    rt = Runtime(torch.device("cpu"), Dist(), amp=False, channels_last=False)
    _, val = load_splits(eager.data, 0)
    val_set = split_data(eager, rt, val, "val")
    plain, padded = eval_loader(eager, val_set, rt), eval_loader(compiled, val_set, rt)
    assert len(val_set) % 20  # a short last batch to pad
    shapes = {tuple(images.shape) for images, _, _ in padded}
    assert shapes == {(20, 3, 16, 16)}
    assert [tuple(b[0].shape) for b in plain][-1][0] == len(val_set) % 20
    labels = torch.cat([b[1] for b in padded])
    assert (labels == -100).sum() == 20 - len(val_set) % 20
    assert torch.equal(labels[labels >= 0], torch.cat([b[1] for b in plain]))
    torch.manual_seed(0)
    model = build_network(eager, 4)
    assert evaluate(model, padded, rt) == pytest.approx(evaluate(model, plain, rt), rel=1e-6)
