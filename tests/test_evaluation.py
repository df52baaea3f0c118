"""Evaluating a checkpoint (`condnet.engine.evaluation`)."""

import pytest

from condnet.engine.evaluation import evaluate_checkpoint
from condnet.engine.metrics import read_metrics
from condnet.engine.trainer import train
from condnet.errors import CondnetError
from tests.helpers import image_config, write_bad_images, write_imagefolder


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
