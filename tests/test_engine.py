"""Training engine: schedule, config validation, learning, resume, evaluate, DDP."""

import json
import math
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

from condnet.cli import main
from condnet.config import TrainConfig, load_config
from condnet.engine.checkpoint import load_checkpoint
from condnet.engine.evaluation import evaluate_checkpoint
from condnet.engine.metrics import read_metrics
from condnet.engine.runtime import make_runtime, rng_state
from condnet.engine.schedule import lr_at
from condnet.engine.trainer import (
    build_network,
    make_optimizer,
    resume_config,
    start_run,
    train,
)
from condnet.errors import CondnetError
from condnet.report.build import PAPER_ROUTING, config_setting
from tests.helpers import FASHION_SUBSET, LEARNS, tiny_config, torchrun_train

ROOT = Path(__file__).resolve().parents[1]


def test_paper_learning_rate_schedule():
    cfg = TrainConfig()

    def cosine(e):
        return 0.0002 + 0.5 * (0.2 - 0.0002) * (
            1 + torch.cos(torch.tensor(torch.pi * (e - 5) / 49)).item()
        )

    expected = {
        0: 0.002,
        1: 0.002 + 0.198 / 5,
        4: 0.002 + 0.198 * 4 / 5,
        5: 0.2,
        30: cosine(30),
        54: 0.0002,
    }
    for epoch, lr in expected.items():
        assert lr_at(epoch, cfg) == pytest.approx(lr, rel=1e-6), epoch


def test_schedule_per_step_is_the_same_curve_at_fractional_epochs():
    cfg = TrainConfig(epochs=3, warmup_epochs=1, lr_start=0.02, lr_peak=0.2, lr_final=0.002)
    assert lr_at(0.5, cfg) == pytest.approx(0.11)  # half-way through the warm-up
    assert lr_at(1.0, cfg) == pytest.approx(0.2) and lr_at(2.0, cfg) == pytest.approx(0.002)
    assert lr_at(1.5, cfg) == pytest.approx(0.002 + 0.5 * 0.198 * (1 + math.cos(math.pi / 2)))
    # The last epoch's steps stay at lr_final: the cosine is held there, not continued upwards.
    assert all(lr_at(2 + step / 10, cfg) == pytest.approx(0.002) for step in range(10))


def test_routing_layers_get_their_own_learning_rate():
    from condnet.engine.trainer import make_optimizer, set_lr

    cfg = tiny_config(**{"model.name": "paper-condconv", "train.routing_lr_scale": 0.01})
    from condnet.engine.trainer import build_network

    model = build_network(cfg, 4)
    optimizer = make_optimizer(model, cfg)
    set_lr(optimizer, 0.1)
    routing = {id(p) for n, p in model.named_parameters() if ".routing." in n}
    assert len(routing) == 2 * 6  # weight and bias of one router per block
    for group in optimizer.param_groups:
        expected = 0.001 if all(id(p) in routing for p in group["params"]) else 0.1
        assert group["lr"] == pytest.approx(expected)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_paper_configs_are_the_paper_recipe():
    for kind in ("standard", "se", "condconv"):
        cfg = load_config(ROOT / "configs" / f"paper-{kind}.yaml")
        assert cfg.model.name == f"paper-{kind}"
        t = cfg.train
        assert (t.epochs, t.batch_size, t.momentum, t.nesterov, t.weight_decay) == (
            55,
            256,
            0.9,
            True,
            5e-5,
        )
        assert (t.lr_start, t.lr_peak, t.lr_final, t.warmup_epochs) == (0.002, 0.2, 0.0002, 5)
        d = cfg.data
        assert (d.crop, d.resize, d.scale, d.hflip) == (56, 64, [0.08, 1.0], 0.5)
        assert d.ratio == pytest.approx([3 / 4, 4 / 3]) and d.std == [0.229, 0.224, 0.225]
        # Block C's routers at 0.1 x the rate, uncapped (README: Training block C).
        assert (t.routing_lr_scale, t.routing_grad_clip) == (0.1, 0.0)


def test_the_exact_config_is_the_paper_recipe_with_the_papers_routing():
    exact = load_config(ROOT / "configs" / "paper-condconv-exact.yaml")
    shipped = load_config(ROOT / "configs" / "paper-condconv.yaml")
    assert {k: config_setting(exact, k, v) for k, v in PAPER_ROUTING.items()} == PAPER_ROUTING
    shipped.train.routing_lr_scale = 1.0  # the only difference
    assert exact == shipped


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"train.lr": 0.1}, "unknown key 'train.lr'; allowed: train.epochs"),
        ({"train.epochs": 0}, r"train.epochs: expected an integer \(>= 1\), got 0"),
        ({"train.lr_peak": -0.1}, r"train.lr_peak: expected a number \(> 0.0\)"),
        ({"train.batch_size": "big"}, "train.batch_size: expected an integer"),
        ({"data.crop": 80}, r"data.crop: must be at most data.resize \(64\)"),
        ({"data.source": "mnist"}, "data.source: expected one of imagefolder"),
        (
            {"model.overrides.num_experts": 0},
            r"model: stages\[0\].num_experts: expected an integer >= 1",
        ),
        ({"model.name": "resnet"}, "model: unknown model 'resnet'"),
        ({"run.deterministic": "yes"}, "run.deterministic: expected true or false"),
    ],
)
def test_bad_config_names_the_key(overrides, message):
    with pytest.raises(CondnetError, match=message):
        load_config(None, overrides)


def test_cli_bad_config_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--set", "train.batch_size=0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.batch_size" in err and not out.exists()


def test_learns_a_small_real_subset(tmp_path):
    cfg = tiny_config(**FASHION_SUBSET, **{"data.hflip": 0.5, "run.threads": 0})
    metrics = train(cfg, tmp_path, progress=False)
    assert metrics[-1]["val_top1"] > 50  # chance is 10 %
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    logged = {"epoch", "lr", "train_loss", "val_loss", "val_top1", "val_top5"}
    assert set(rows[0]) >= logged | {"epoch_seconds", "images_per_second"}
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0].startswith("epoch,lr,train_loss")
    assert load_config(tmp_path / "config.yaml").data.train_subset == 1024


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
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1, 2]
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
    assert state["resumes"] == [{"epoch": 1, "changes": before}]
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


def test_checkpoint_contents_and_evaluate_matches_log(tmp_path, capsys):
    metrics = train(tiny_config(**LEARNS), tmp_path, progress=False)
    top1 = [m["val_top1"] for m in metrics]
    best = max(range(3), key=top1.__getitem__)
    assert best > 0 and top1[best] > 40  # learnt after the first epoch, far above chance (12.5)
    assert any(m["val_top1"] < m["val_top5"] < 100 for m in metrics)  # top-5 of 8 classes
    state = load_checkpoint(tmp_path / "last.pt")
    assert {
        "model",
        "optimizer",
        "epoch",
        "rng",
        "config",
        "class_names",
        "metrics",
        "versions",
    } <= set(state)
    assert state["epoch"] == 2 and len(state["metrics"]) == 3
    for name, epoch in (("last.pt", 2), ("best.pt", best)):
        result = evaluate_checkpoint(tmp_path / name)
        assert result["epoch"] == epoch and result["count"] == metrics[epoch]["val_images"] == 64
        assert result["top1"] == pytest.approx(metrics[epoch]["val_top1"])
        assert result["top5"] == pytest.approx(metrics[epoch]["val_top5"])
        assert result["loss"] == pytest.approx(metrics[epoch]["val_loss"], rel=1e-5)
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "last.pt"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["top5"] == pytest.approx(metrics[2]["val_top5"]) and result["precision"] == "fp32"
    assert main(["evaluate", str(tmp_path / "last.pt")]) == 0
    assert f"images, fp32 on {result['device']})" in capsys.readouterr().out


def test_best_checkpoint_is_the_first_epoch_with_the_best_top1(tmp_path, monkeypatch):
    from condnet.engine import trainer

    scores, real = iter([30.0, 60.0, 60.0]), trainer.evaluate
    monkeypatch.setattr(trainer, "evaluate", lambda *a, **k: real(*a, **k) | {"top1": next(scores)})
    train(tiny_config(), tmp_path, progress=False)
    best, last = load_checkpoint(tmp_path / "best.pt"), load_checkpoint(tmp_path / "last.pt")
    assert (best["epoch"], best["best_top1"]) == (1, 60.0)
    assert (last["epoch"], last["best_top1"]) == (2, 60.0)


def test_refuses_to_overwrite_a_run(tmp_path):
    train(tiny_config(**{"train.epochs": 1}), tmp_path, progress=False)
    with pytest.raises(CondnetError, match="already holds a run"):
        train(tiny_config(**{"train.epochs": 1}), tmp_path, progress=False)


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


def test_epoch_eval_subset_is_fixed_and_class_balanced(tmp_path, monkeypatch):
    from condnet.engine import trainer

    seen = []
    real = trainer.evaluate

    def spy(model, loader, rt, **options):
        seen.append(sorted(label for _, labels, _ in loader for label in labels.tolist()))
        return real(model, loader, rt, **options)

    monkeypatch.setattr(trainer, "evaluate", spy)
    train(tiny_config(**{"train.epoch_eval_subset": 12}), tmp_path, progress=False)
    assert seen[0] == seen[1] == sorted([0, 1, 2, 3] * 3)  # 3 of each of the 4 classes, every epoch
    assert len(seen[2]) == 48  # the last epoch: the whole validation set


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
    assert epochs == list(range(len(epochs)))
    assert load_checkpoint(run / "last.pt")["epoch"] == epochs[-1]


def test_fused_sgd_matches_the_loop():
    cfg = tiny_config()
    results = []
    for fused in (False, True):
        torch.manual_seed(0)
        model = build_network(cfg, 4)
        optimizer = make_optimizer(model, cfg, fused=fused)
        for _ in range(3):
            loss = model(torch.randn(8, 3, 16, 16)).logsumexp(1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(results[0], results[1], atol=1e-6)


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
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [0, 1]
