"""DDP (`condnet.engine.distributed`): a two-process step equals one process on the global batch,
in either data pipeline; a two-process run's metrics; a signal to one rank stops every rank."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from condnet.data.datasets import load_splits
from condnet.engine.checkpoint import load_checkpoint
from condnet.engine.distributed import Dist
from condnet.engine.evaluation import evaluate_checkpoint
from condnet.engine.loaders import split_data, train_loader
from condnet.engine.metrics import read_metrics
from condnet.engine.runtime import Runtime, seed_epoch
from condnet.engine.schedule import lr_at
from condnet.engine.trainer import build_network, make_optimizer, set_lr
from tests.helpers import LEARNS, tensor_config, tiny_config, torchrun_train

ROOT = Path(__file__).resolve().parents[1]


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


def test_two_process_gloo_ddp(tmp_path):
    # 65 validation images: an odd count, which a sampler padding the shards would count twice.
    cfg = tiny_config(**{**LEARNS, "data.synthetic_images": 260, "run.threads": 1})
    cfg.save(tmp_path / "cfg.yaml")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = torchrun_train(tmp_path / "cfg.yaml", tmp_path / "run", port=29561)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3  # rank 0 alone writes
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.suffix == ".pt") == [
        "best.pt",
        "last.pt",
    ]
    # Evaluation covered every validation image exactly once across the two ranks: the count,
    # and the metrics of one process evaluating the same weights on the whole set.
    assert all(r["val_images"] == 65 for r in records)
    assert records[-1]["val_top1"] > 40  # learnt: the metrics compared are not a constant
    single = evaluate_checkpoint(tmp_path / "run" / "last.pt")
    assert single["count"] == 65
    for key in ("top1", "top5", "loss"):
        assert single[key] == pytest.approx(records[-1][f"val_{key}"], rel=1e-5), key


def start_ranks(args: list[str], world: int = 2) -> list[subprocess.Popen]:
    """`condnet <args>` in `world` processes joined by gloo, as torchrun would start them."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    procs = []
    for rank in range(world):
        env = dict(
            os.environ,
            OMP_NUM_THREADS="1",
            PYTHONPATH=str(ROOT),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            WORLD_SIZE=str(world),
            RANK=str(rank),
            LOCAL_RANK=str(rank),
        )
        command = [sys.executable, "-m", "condnet.cli", *args]
        procs.append(
            subprocess.Popen(
                command,
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def finish(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    """Each rank's exit status and standard error (a rank still running after 2 minutes is
    killed: a rank left alone in a collective would wait for its peers for half an hour)."""
    try:
        errors = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [(p.returncode, err) for p, err in zip(procs, errors, strict=False)]


def test_signal_to_one_ddp_rank_stops_every_rank_at_the_same_step(tmp_path):
    cfg = tiny_config(**{"train.epochs": 3, "data.synthetic_images": 320})
    cfg.save(tmp_path / "cfg.yaml")
    run = tmp_path / "run"
    procs = start_ranks(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(run)])
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text():
        assert time.time() < deadline and procs[0].poll() is None, "no epoch finished"
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)  # one rank only, somewhere in the second epoch
    stops = set()
    for rank, (status, err) in enumerate(finish(procs)):
        assert status == 128 + signal.SIGTERM and "Traceback" not in err, err[-2000:]
        said = re.findall(rf"rank {rank}: SIGTERM: stopped before (step \d+ of epoch \d+)", err)
        stops.update(said)
    assert len(stops) == 1  # both ranks said where, and it is the same step
    # The checkpoint holds the last finished epoch, which the metrics end with.
    epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, len(epochs) + 1))  # counted from 1
    assert load_checkpoint(run / "last.pt")["epoch"] == epochs[-1]
