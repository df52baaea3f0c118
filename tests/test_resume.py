"""Resuming a run (`condnet.engine.resume` and the trainer's resume path)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from condnet.cli import main
from condnet.config import load_config
from condnet.engine.checkpoint import load_checkpoint
from condnet.engine.metrics import read_metrics
from condnet.engine.runtime import make_runtime, rng_state
from condnet.engine.trainer import resume_config, start_run, train
from tests.helpers import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def weights(path):
    return load_checkpoint(path)["model"]


class Recorded:
    """A training loader that keeps a copy of every batch it yields in `batches`."""

    def __init__(self, loader, batches: list) -> None:
        self.loader, self.batches = loader, batches

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, labels, bad in self.loader:
            self.batches.append((images.clone(), labels.clone()))
            yield images, labels, bad


def recording(monkeypatch) -> dict:
    """Records, per epoch of the runs that follow, the state of every global generator it starts
    from (before its seeding) and the training batches it sees."""
    from condnet.engine import trainer

    record, seed, loader = {"states": {}, "batches": {}}, trainer.seed_epoch, trainer.train_loader

    def seeding(run_seed, epoch, rank):
        record["states"][epoch] = rng_state()
        return seed(run_seed, epoch, rank)

    def recorded(cfg, data, rt, epoch, generator):
        batches = record["batches"].setdefault(epoch, [])
        return Recorded(loader(cfg, data, rt, epoch, generator), batches)

    monkeypatch.setattr(trainer, "seed_epoch", seeding)
    monkeypatch.setattr(trainer, "train_loader", recorded)
    return record


def same_state(a: dict, b: dict) -> bool:
    name, keys, *rest = a["numpy"]
    return (
        torch.equal(a["torch"], b["torch"])
        and a["python"] == b["python"]
        and [name, *rest] == [b["numpy"][0], *b["numpy"][2:]]
        and torch.equal(keys, b["numpy"][1])
    )


def same_batches(a: list, b: list) -> bool:
    pairs = zip(a, b, strict=True)
    return all(torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in pairs)


@pytest.mark.parametrize("stop_after", [1, 2])
def test_resume_is_bit_identical(tmp_path, monkeypatch, stop_after):
    full = recording(monkeypatch)
    train(tiny_config(), tmp_path / "full", progress=False)
    monkeypatch.undo()
    train(tiny_config(), tmp_path / "part", progress=False, stop_after=stop_after)
    resumed = recording(monkeypatch)
    train(resume_config(tmp_path / "part"), tmp_path / "part", resume=True, progress=False)
    full_weights, part = (
        weights(tmp_path / "full" / "last.pt"),
        weights(tmp_path / "part" / "last.pt"),
    )
    assert all(torch.equal(full_weights[k], part[k]) for k in full_weights)
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]
    # The resumed process starts each epoch from the generators' states, and sees the batches,
    # of the uninterrupted run: the checkpoint's states were restored (each epoch then seeds
    # its own, so the states protect whatever draws before that).
    assert sorted(resumed["states"]) == sorted(resumed["batches"]) == list(range(stop_after, 3))
    for epoch in range(stop_after, 3):
        assert same_state(resumed["states"][epoch], full["states"][epoch]), epoch
        assert same_batches(resumed["batches"][epoch], full["batches"][epoch]), epoch
    # Each epoch has an order and augmentation of its own.
    first, second = full["batches"][0], full["batches"][1]
    assert not torch.equal(torch.cat([y for _, y in first]), torch.cat([y for _, y in second]))
    assert not same_state(full["states"][1], full["states"][2])


def test_optimizer_settings_changed_on_resume_are_applied(tmp_path, capsys):
    cfg = tiny_config(**{"model.name": "paper-condconv", "train.epochs": 1})
    train(cfg, tmp_path, progress=False)
    changed = {
        "train.weight_decay": 0.001,
        "train.momentum": 0.5,
        "train.nesterov": False,
        "train.routing_lr_scale": 0.5,
        "train.epochs": 2,
    }
    capsys.readouterr()
    settings = [f"{key}={value}" for key, value in changed.items()]
    assert main(["train", "--resume", str(tmp_path), "--set", *settings]) == 0
    assert "train.weight_decay 5e-05 -> 0.001" in capsys.readouterr().err
    state = load_checkpoint(tmp_path / "last.pt")
    lr = state["metrics"][-1]["lr"]
    for group in state["optimizer"]["param_groups"]:  # as the second epoch trained
        assert (group["weight_decay"], group["momentum"], group["nesterov"]) == (0.001, 0.5, False)
        scale = 0.5 if group["routing"] else 1.0
        assert group["lr_scale"] == scale and group["lr"] == pytest.approx(lr * scale)
    before = {key: [getattr(cfg.train, key[6:]), value] for key, value in changed.items()}
    assert state["resumes"] == [{"epoch": 2, "changes": before}]  # from the second epoch
    assert load_config(tmp_path / "config.yaml").train.weight_decay == 0.001


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one-epoch")
    train(tiny_config(**{"train.epochs": 1}), out, progress=False)
    return out


@pytest.mark.parametrize(
    "setting",
    [
        "model.name=paper-se",
        "model.overrides.num_experts=8",
        "data.crop=12",
        "data.synthetic_classes=5",
        "run.seed=3",
        "train.routing_init=reference",
        "train.expert_init=shared",
    ],
)
def test_settings_that_cannot_change_on_resume_are_refused(one_epoch_run, capsys, setting):
    files = {p: p.read_bytes() for p in one_epoch_run.rglob("*") if p.is_file()}
    assert main(["train", "--resume", str(one_epoch_run), "--set", setting, "train.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{setting.split('=')[0]}: cannot change on resume" in err
    assert {p: p.read_bytes() for p in one_epoch_run.rglob("*") if p.is_file()} == files


def test_resume_on_other_classes_is_refused(tmp_path, capsys):
    from tests.helpers import write_imagefolder

    first = write_imagefolder(tmp_path / "a")
    other = write_imagefolder(tmp_path / "b", ("ant", "bee", "cow"))
    cfg = tiny_config(**{"data.source": "imagefolder", "data.root": str(first), "train.epochs": 1})
    train(cfg, tmp_path / "run", progress=False)
    resume = ["train", "--resume", str(tmp_path / "run"), "--set", "train.epochs=2"]
    assert main([*resume, f"data.root={other}"]) == 2
    assert "classes are not the checkpoint's" in capsys.readouterr().err
    assert main([*resume, f"data.root={first}"]) == 0  # the same data moved: resumes


def test_resume_uses_the_fused_update_of_this_device_not_the_checkpoints(tmp_path):
    """A run saved on a GPU (fused SGD) resumes on the CPU with the per-parameter update."""
    from condnet.engine.checkpoint import save_checkpoint

    cfg = tiny_config(**{"train.epochs": 2})
    train(cfg, tmp_path, progress=False, stop_after=1)
    state = load_checkpoint(tmp_path / "last.pt")
    for group in state["optimizer"]["param_groups"]:
        group["fused"] = True  # as make_optimizer sets it on CUDA
    save_checkpoint(state, tmp_path / "last.pt")
    train(resume_config(tmp_path), tmp_path, resume=True, progress=False)
    groups = load_checkpoint(tmp_path / "last.pt")["optimizer"]["param_groups"]
    assert [g["fused"] for g in groups] == [None] * len(groups)
    assert [g["foreach"] for g in groups] == [False] * len(groups)  # the per-parameter loop


@pytest.mark.parametrize("before", [False, True], ids=["to-channels-last", "to-nchw"])
def test_resume_with_another_layout_keeps_the_momentum_in_the_weights_layout(tmp_path, before):
    """`run.channels_last` changed on resume: every momentum buffer takes its weight's new
    strides (the fused update refuses unequal ones), and the run goes on."""
    cfg = tiny_config(
        **{"train.epochs": 2, "run.channels_last": before, "model.name": "paper-condconv"}
    )
    train(cfg, tmp_path, progress=False, stop_after=1)
    changed = resume_config(tmp_path, {"run.channels_last": not before})
    state = load_checkpoint(tmp_path / "last.pt")
    ctx = start_run(changed, make_runtime(changed.run), 4, state=state)
    params = [p for group in ctx.optimizer.param_groups for p in group["params"]]  # state order
    pairs = [(p, ctx.optimizer.state[p]["momentum_buffer"]) for p in params]
    moved = [p for p, _ in pairs if p.dim() >= 4 and not p.is_contiguous()]
    assert bool(moved) is not before  # the weights changed layout (to channels_last, or back)
    assert all(b.stride() == p.stride() and b.device == p.device for p, b in pairs)
    momentum = {k: v["momentum_buffer"] for k, v in state["optimizer"]["state"].items()}
    restored = [b for _, b in pairs]
    assert all(torch.equal(restored[i], momentum[i]) for i in momentum)  # same values
    train(changed, tmp_path, resume=True, progress=False)
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2]


def run_cli(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "condnet.cli", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_epochs(run: Path, count: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").exists() and len(
            (run / "metrics.jsonl").read_text().splitlines()
        ) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"run did not reach {count} epochs")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    cfg = tiny_config(**{"train.epochs": 4, "data.synthetic_images": 320})
    cfg.save(folder / "cfg.yaml")
    train(cfg, folder / "full", progress=False)
    return folder


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "SIGKILL"])
def test_interrupted_run_resumes_bit_identical(tmp_path, uninterrupted, how):
    run = tmp_path / "run"
    proc = run_cli(["train", "--config", str(uninterrupted / "cfg.yaml"), "--out", str(run)])
    wait_for_epochs(run, 1, proc)
    time.sleep(0.3)  # somewhere inside the next epoch
    proc.send_signal(getattr(signal, how))
    _, err = proc.communicate(timeout=60)
    if how == "SIGKILL":
        assert proc.returncode == -9
    else:
        assert proc.returncode == 128 + getattr(signal, how), err
        assert "continue with: condnet train --resume" in err and "Traceback" not in err
    assert load_checkpoint(run / "last.pt")["epoch"] >= 0
    proc = run_cli(["train", "--resume", str(run)])
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    full, resumed = (
        load_checkpoint(uninterrupted / "full" / "last.pt"),
        load_checkpoint(run / "last.pt"),
    )
    assert all(torch.equal(full["model"][k], resumed["model"][k]) for k in full["model"])
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
        3,
        4,
    ]
