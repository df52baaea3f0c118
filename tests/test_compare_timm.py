"""benchmarks/compare_timm.py: the timm reference is the same network; a tiny race runs."""

import math
import sys
from pathlib import Path

import pytest
import torch

import condnet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import compare_timm
from timm_reference import build_timm


@pytest.mark.parametrize("block", ["standard", "se", "condconv"])
def test_timm_reference_has_condnets_parameter_count_and_shapes(block):
    theirs, ours = build_timm(block), condnet.build_model(f"paper-{block}")
    count = sum(p.numel() for p in ours.parameters())
    assert sum(p.numel() for p in theirs.parameters()) == count
    x = torch.randn(2, 3, 56, 56)
    assert theirs.eval()(x).shape == ours.eval()(x).shape == (2, 100)
    features = theirs.forward_features(x)
    assert features.shape == ours.forward_features(x).shape == (2, 1280, 7, 7)  # stem stride 1


def test_a_tiny_race_reports_every_metric():
    args = compare_timm.parse_args(
        ["--blocks", "standard", "--rounds", "1", "--iters", "1", "--resolution", "16", "--onnx"]
    )
    medians = compare_timm.race("standard", args)
    assert set(medians) == {"condnet", "timm", "onnxruntime"}
    for side in ("condnet", "timm"):
        assert all(medians[side][m] > 0 for m in compare_timm.METRICS)
    assert math.isnan(medians["onnxruntime"]["train"]) and medians["onnxruntime"]["latency1"] > 0
    table = compare_timm.report({"standard": medians}, rate=50.0, resolution=16)
    assert table.count("standard") == 5 and "GFLOP/s" in table and "ONNX Runtime" in table


def test_each_side_trains_in_train_mode_and_infers_in_eval_mode():
    sides = compare_timm.contenders("standard", compare_timm.parse_args([]), Path("."))
    timm_side = sides["timm"]
    modes = []
    timm_side.train_model.register_forward_pre_hook(lambda m, _: modes.append(m.training))
    for metric in ("latency1", "train", "latency1"):
        timm_side.run(metric, resolution=16, iters=1)
    assert modes[0] is False and modes[-1] is False and True in modes


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        compare_timm.parse_args(["--blocks", "resnet"])
