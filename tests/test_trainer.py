"""The training loop (`condnet.engine.trainer`)."""

import errno
import json
import os
import signal
from pathlib import Path

import pytest
import torch

from condnet.cli import main
from condnet.config import load_config
from condnet.engine import checkpoint as ckpt_module
from condnet.engine.checkpoint import load_checkpoint
from condnet.engine.trainer import build_network, make_optimizer, resume_config, train
from condnet.errors import CondnetError
from tests.helpers import (
    FASHION_SUBSET,
    image_config,
    small_run,
    tiny_config,
    write_bad_images,
    write_imagefolder,
    write_odd_images,
)


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


def test_learns_a_small_real_subset(tmp_path):
    cfg = tiny_config(**FASHION_SUBSET, **{"data.hflip": 0.5, "run.threads": 0})
    metrics = train(cfg, tmp_path, progress=False)
    assert metrics[-1]["val_top1"] > 50  # chance is 10 %
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]  # counted from 1, as printed
    logged = {"epoch", "lr", "train_loss", "val_loss", "val_top1", "val_top5"}
    assert set(rows[0]) >= logged | {"epoch_seconds", "images_per_second"}
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0].startswith("epoch,lr,train_loss")
    assert load_config(tmp_path / "config.yaml").data.train_subset == 1024


def test_refuses_to_overwrite_a_run(tmp_path):
    train(tiny_config(**{"train.epochs": 1}), tmp_path, progress=False)
    with pytest.raises(CondnetError, match="already holds a run"):
        train(tiny_config(**{"train.epochs": 1}), tmp_path, progress=False)


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


def folder_with_bad_files(tmp_path: Path) -> Path:
    root = write_imagefolder(tmp_path / "data", per_class=6)
    write_odd_images(root / "train" / "cat")
    write_bad_images(root / "train" / "dog")
    return root


def test_training_skips_unreadable_images_with_one_line_each(tmp_path, capfd):
    root = folder_with_bad_files(tmp_path)
    metrics = train(image_config(root), tmp_path / "run", progress=False)
    err = capfd.readouterr().err
    for name in ("truncated.jpg", "empty.jpg", "text.jpg", "bomb.png"):
        assert sum(name in line for line in err.splitlines()) == 1, name
    assert "skipped 4 unreadable images" in err and "Traceback" not in err
    assert metrics[0]["skipped_images"] == 4


def test_on_bad_image_error_stops_with_one_line(tmp_path, capfd):
    root = folder_with_bad_files(tmp_path)
    cfg = image_config(root, **{"data.on_bad_image": "error"})
    cfg.save(tmp_path / "cfg.yaml")
    assert (
        main(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "run")]) == 2
    )
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.on_bad_image=error" in err[0] and "Traceback" not in err[0]


def test_full_disk_keeps_the_previous_config(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    tiny_config(**{"train.epochs": 3}).save(path)
    real_write_text = Path.write_text

    def full_disk(self, text, *args, **kwargs):
        real_write_text(self, text[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError):
        tiny_config(**{"train.epochs": 5}).save(path)
    monkeypatch.undo()
    assert load_config(path).train.epochs == 3
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # no temporary left behind


def test_full_disk_during_training_is_one_clear_error(tmp_path, monkeypatch):
    run = small_run(tmp_path, **{"train.epochs": 2})
    before = load_checkpoint(run / "last.pt")["epoch"]
    monkeypatch.setattr(
        ckpt_module.torch,
        "save",
        lambda obj, f: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")),
    )
    cfg = resume_config(run, {"train.epochs": 3})
    with pytest.raises(
        CondnetError, match="No space left on device.*previous checkpoint is intact"
    ):
        train(cfg, run, resume=True, progress=False)
    monkeypatch.undo()
    assert load_checkpoint(run / "last.pt")["epoch"] == before


def test_a_signal_stops_training_after_the_current_step(tmp_path, monkeypatch, capsys):
    """SIGINT arrives during the optimizer step of step 3 of epoch 2: that step finishes, the
    next one never starts, and last.pt holds epoch 1."""
    from condnet.engine import trainer

    steps, make_optimizer = [], trainer.make_optimizer

    def counting(*args, **kwargs):
        optimizer = make_optimizer(*args, **kwargs)
        optimizer.register_step_pre_hook(
            lambda *_: os.kill(os.getpid(), signal.SIGINT) if len(steps) == 6 + 2 else None
        )
        optimizer.register_step_post_hook(lambda *_: steps.append(1))
        return optimizer

    monkeypatch.setattr(trainer, "make_optimizer", counting)
    with pytest.raises(trainer.Interrupted):
        train(tiny_config(), tmp_path / "run", progress=False)  # 6 steps an epoch
    assert len(steps) == 6 + 3
    assert "SIGINT: stopped before step 4 of epoch 2; " in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1  # epochs finished
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = tiny_config(**{"train.lr_start": 1e30, "train.lr_peak": 1e30, "train.epochs": 2})
    with pytest.raises(CondnetError, match="training loss became (nan|inf)"):
        train(cfg, tmp_path / "run", progress=False)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["epoch"] == 0 and all(  # none finished
        torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()
    )


def test_a_run_starts_from_weights_given_in_a_checkpoint_or_a_safetensors_file(tmp_path, capsys):
    from condnet.data.transform_spec import TransformSpec
    from condnet.deploy.bundle import Bundle
    from condnet.deploy.weights import save_weights

    run = small_run(tmp_path)
    trained = load_checkpoint(run / "last.pt")
    model = build_network(tiny_config(), 4)
    model.load_state_dict(trained["model"])
    save_weights(Bundle(model, list("abcd"), TransformSpec(crop=16)), tmp_path / "w.safetensors")
    for source in (run / "last.pt", tmp_path / "w.safetensors"):
        started = build_network(tiny_config(**{"train.init_weights": str(source)}), 4)
        for name, value in started.state_dict().items():
            assert torch.equal(value, trained["model"][name]), (source.name, name)
    # Another class count: refused, unless the classifier starts afresh.
    other = {"train.init_weights": str(run / "last.pt")}
    with pytest.raises(CondnetError, match=r"classifier.bias: shape \(4,\), this network.s \(7,\)"):
        build_network(tiny_config(**other), 7)
    fresh = build_network(tiny_config(**other, **{"train.init_classifier": "new"}), 7)
    assert fresh.classifier.out_features == 7
    assert torch.equal(fresh.stem.conv.weight, trained["model"]["stem.conv.weight"])
    # Another network, a missing file: one line each, nothing trained.
    with pytest.raises(CondnetError, match="not in this network|missing"):
        build_network(tiny_config(**other, **{"model.name": "paper-se"}), 4)
    out = tmp_path / "run2"
    sets = ["--set", "train.init_weights=nowhere.pt", "train.epochs=1", "train.warmup_epochs=0"]
    assert main(["train", "--out", str(out), *sets]) == 2
    assert "train.init_weights: file not found: nowhere.pt" in capsys.readouterr().err
