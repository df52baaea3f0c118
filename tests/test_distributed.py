"""DDP (`condnet.engine.distributed`): a two-process step equals one process on the global batch,
in either data pipeline."""

import os
import subprocess

import pytest
import torch
import torch.nn.functional as F

from condnet.data.datasets import load_splits
from condnet.engine.checkpoint import load_checkpoint
from condnet.engine.distributed import Dist
from condnet.engine.loaders import split_data, train_loader
from condnet.engine.metrics import read_metrics
from condnet.engine.runtime import Runtime, seed_epoch
from condnet.engine.schedule import lr_at
from condnet.engine.trainer import build_network, make_optimizer, set_lr
from tests.helpers import tensor_config, torchrun_train


@pytest.mark.parametrize("pipeline", ["tensor", "torchvision"])
def test_two_process_ddp_step_equals_one_process_on_the_global_batch(tmp_path, pipeline):
    """Each rank trains on its 32 of a global batch of 64; one process given the same 64 images
    (with the same augmentation) and the same per-rank BatchNorm statistics takes the same step."""
    cfg = tensor_config(
        tmp_path,
        **{
            "data.pipeline": pipeline,
            "data.synthetic_images": 64,
            "train.batch_size": 64,
            "train.epochs": 1,
            "train.warmup_epochs": 0,
            "train.lr_peak": 0.5,
        },
    )
    cfg.save(tmp_path / "cfg.yaml")
    cmd = torchrun_train(tmp_path / "cfg.yaml", tmp_path / "run", port=29573)
    proc = subprocess.run(
        cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ddp = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert read_metrics(tmp_path / "run")[0]["val_images"] == 16  # each image once
    # The same global batch, as each rank drew its half (the tensor pipeline's cache is built).
    train_split, _ = load_splits(cfg.data, cfg.run.seed)
    halves, drawn = [], []
    for rank in (0, 1):
        rt = Runtime(torch.device("cpu"), Dist(rank, 2), amp=False, channels_last=False)
        data = split_data(cfg, rt, train_split, "train")
        loader = train_loader(cfg, data, rt, 0, seed_epoch(0, 0, rank))
        assert len(loader) == 1
        halves.append(next(iter(loader))[:2])
        drawn += list(loader.sampler) if pipeline == "torchvision" else []
    if pipeline == "torchvision":  # the two halves make up the global batch (the tensor
        assert sorted(drawn) == list(range(64))  # pipeline's shards are disjoint by construction)

    def one_step(batches) -> dict:
        torch.manual_seed(cfg.run.seed)
        model = build_network(cfg, 4)
        optimizer = make_optimizer(model, cfg)
        set_lr(optimizer, lr_at(0, cfg.train))
        loss = sum(F.cross_entropy(model(x), y) for x, y in batches) / len(batches)
        loss.backward()
        optimizer.step()
        return dict(model.named_parameters())

    single, rank0_only = one_step(halves), one_step(halves[:1])
    torch.manual_seed(cfg.run.seed)
    initial = dict(build_network(cfg, 4).named_parameters())
    assert max((single[k] - initial[k]).abs().max().item() for k in single) > 1e-2  # a real step
    for name, value in single.items():
        assert torch.allclose(value, ddp[name], atol=1e-6, rtol=1e-5), name
    assert any(not torch.allclose(rank0_only[k], ddp[k], atol=1e-4) for k in single)
