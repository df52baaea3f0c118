"""Evaluating a checkpoint (`condnet.engine.evaluation`)."""

import json

import pytest

from condnet.cli import main
from condnet.engine.evaluation import evaluate_checkpoint
from condnet.engine.metrics import read_metrics
from condnet.engine.trainer import train
from condnet.errors import CondnetError
from tests.helpers import image_config, plain_folder, write_bad_images, write_imagefolder


@pytest.mark.parametrize("pipeline", ["torchvision", "tensor"])
def test_evaluation_honours_on_bad_image_error(tmp_path, pipeline):
    root = write_imagefolder(tmp_path / "data", per_class=6)
    write_bad_images(root / "val" / "dog")  # training reads only good files
    settings = {"data.pipeline": pipeline, "data.cache": str(tmp_path / "cache")}
    train(image_config(root, **settings), tmp_path / "run", progress=False)  # skips them
    error = {**settings, "data.on_bad_image": "error"}
    with pytest.raises(CondnetError, match="val/dog/.*data.on_bad_image=error"):
        evaluate_checkpoint(tmp_path / "run" / "last.pt", error)
    with pytest.raises(CondnetError, match="val/dog/.*data.on_bad_image=error"):
        train(image_config(root, **error), tmp_path / "strict", progress=False)
    assert read_metrics(tmp_path / "strict") == []  # no epoch was recorded


def test_evaluate_on_a_folder_with_some_of_the_checkpoints_classes(tmp_path, capsys):
    run = tmp_path / "run"
    write_imagefolder(tmp_path / "data", ("cat", "dog", "fish"))
    train(image_config(tmp_path / "data", **{"train.warmup_epochs": 0}), run, progress=False)
    mine = plain_folder(tmp_path / "mine", ("fish", "cat"), per_class=3)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(mine), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["count"] == 6 and result["classes"] == 2  # all of it: none was trained on
    zebra = plain_folder(tmp_path / "zoo", ("cat", "zebra"), per_class=2)
    assert main(["evaluate", str(run), "--data", str(zebra)]) == 2
    assert "class 'zebra' is not one of the checkpoint's" in capsys.readouterr().err


def test_evaluate_takes_a_weights_file_with_the_datas_config(tmp_path, capsys):
    """A .safetensors file holds no training config: the data comes from --config and
    --set, its sizes and normalisation from the file's eval transform."""
    run = tmp_path / "run"
    write_imagefolder(tmp_path / "data", ("cat", "dog", "fish"))
    train(image_config(tmp_path / "data", **{"train.warmup_epochs": 0}), run, progress=False)
    weights = tmp_path / "w.safetensors"
    assert main(["export", str(run), "--last", "--weights", str(weights)]) == 0
    capsys.readouterr()
    sets = ["data.source=imagefolder", f"data.root={tmp_path / 'data'}", "run.threads=1"]
    assert main(["evaluate", str(weights), "--json", "--set", *sets]) == 0
    from_weights = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(run), "--last", "--json"]) == 0
    from_checkpoint = json.loads(capsys.readouterr().out)
    assert from_weights["epoch"] is None and from_weights["count"] == from_checkpoint["count"]
    assert from_weights["top1"] == from_checkpoint["top1"]
    assert from_weights["loss"] == pytest.approx(from_checkpoint["loss"], rel=1e-5)
