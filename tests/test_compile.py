"""torch.compile in the training loop (run.compile): fixed shapes, no recompiles."""

import torch

from condnet.engine.trainer import resume_config, train
from tests.helpers import tensor_config


def eager_compile(monkeypatch) -> None:
    """torch.compile with Dynamo alone (the eager backend): Inductor takes minutes on this CPU."""
    compile_ = torch.compile
    monkeypatch.setattr(
        torch,
        "compile",
        lambda model, dynamic=None, mode=None: compile_(model, backend="eager", dynamic=dynamic),
    )


def test_compiled_training_never_recompiles_after_the_first_epoch(tmp_path, monkeypatch):
    """Fixed shapes: one graph for training and one for evaluation, whatever the set sizes."""
    from torch._dynamo.utils import counters

    eager_compile(monkeypatch)
    torch._dynamo.reset()
    counters.clear()
    cfg = tensor_config(
        tmp_path,
        **{
            "data.synthetic_images": 200,
            "train.epochs": 2,
            "train.eval_batch_size": 32,
            "run.compile": True,
        },
    )
    train(cfg, tmp_path / "run", progress=False, stop_after=1)
    assert counters["stats"]["unique_graphs"] == 2  # 6 full batches of 32; 50 val images as 2 x 32
    train(resume_config(tmp_path / "run"), tmp_path / "run", resume=True, progress=False)
    assert counters["stats"]["unique_graphs"] == 2
