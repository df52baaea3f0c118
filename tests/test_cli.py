"""The `condnet` command's conventions shared by every subcommand (`condnet.cli`)."""

import torch

from condnet.cli import main
from condnet.commands.common import split_set_options
from tests.helpers import small_run


def test_set_may_repeat_and_come_before_or_after_the_positional_arguments():
    assert split_set_options(["evaluate", "--set", "a=1", "b=2", "CKPT", "--json"]) == [
        *("evaluate", "--set", "a=1", "--set", "b=2", "CKPT", "--json"),
    ]
    assert split_set_options(["evaluate", "CKPT", "--set", "a=1", "--set", "b=2"]) == [
        *("evaluate", "CKPT", "--set", "a=1", "--set", "b=2"),
    ]
    assert split_set_options(["train", "--set", "a=1", "--out", "x=y"])[-2:] == ["--out", "x=y"]


def test_evaluate_takes_its_checkpoint_after_set(tmp_path, capsys):
    """`--set` used to swallow the checkpoint: "the following arguments are required"."""
    run = small_run(tmp_path)
    checkpoint = str(run / "last.pt")
    assert main(["evaluate", "--set", "data.synthetic_images=96", checkpoint, "--json"]) == 0
    assert '"checkpoint"' in capsys.readouterr().out
    assert main(["evaluate", checkpoint, "--set", "train.eval_batch_size=32", "run.threads=1"]) == 0


def test_seed_and_device_are_the_run_keys_they_stand_for(tmp_path):
    import yaml

    out = tmp_path / "run"
    sets = ["--set", "train.epochs=1", "data.source=synthetic", "data.synthetic_images=64"]
    sets += ["data.resize=16", "data.crop=16", "train.warmup_epochs=0", "model.overrides.widths=8"]
    assert main(["train", "--out", str(out), "--seed", "7", "--device", "cpu", *sets]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["run"]["seed"] == 7 and saved["run"]["device"] == "cpu"


def test_a_run_folder_given_to_predict_and_export_is_named(tmp_path, capsys):
    from PIL import Image

    run = small_run(tmp_path)
    Image.new("RGB", (20, 20), (200, 10, 10)).save(tmp_path / "red.png")
    capsys.readouterr()
    assert main(["predict", str(run), str(tmp_path / "red.png")]) == 0
    assert f"condnet: using {run / 'best.pt'}" in capsys.readouterr().err
    assert main(["export", str(run), "--last", "--weights", str(tmp_path / "w.safetensors")]) == 0
    assert f"condnet: using {run / 'last.pt'}" in capsys.readouterr().err
    expected = 0 if torch.cuda.is_available() else 2  # one line: no CUDA device here
    assert main(["predict", "--device", "cuda", str(run), str(tmp_path / "red.png")]) == expected


def test_config_show_prints_the_resolved_config_without_running(tmp_path, capsys):
    import yaml

    assert (
        main(["config", "show", "--config", "configs/paper-se.yaml", "--set", "train.epochs=9"])
        == 0
    )
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["model"]["name"] == "paper-se" and shown["train"]["epochs"] == 9
    assert shown["train"]["lr_peak"] == 0.2 and "base" not in shown  # from configs/paper.yaml
    assert not list(tmp_path.iterdir())
    assert main(["config", "show", "--set", "train.epoch=9"]) == 2
    assert "did you mean 'train.epochs'" in capsys.readouterr().err
