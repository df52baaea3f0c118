"""benchmarks/compare_timm.py: the timm reference is the same network; a tiny race runs."""

import math
import sys
from pathlib import Path

import pytest
import torch

import condnet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import compare_timm
from tests.deploy_helpers import trained_like
from timm_reference import build_timm, copy_condnet_weights, timm_names

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("block", ["standard", "se", "condconv"])
def test_timm_reference_has_condnets_parameter_count_and_shapes(block):
    theirs, ours = build_timm(block), condnet.build_model(f"paper-{block}")
    count = sum(p.numel() for p in ours.parameters())
    assert sum(p.numel() for p in theirs.parameters()) == count
    x = torch.randn(2, 3, 56, 56)
    assert theirs.eval()(x).shape == ours.eval()(x).shape == (2, 100)
    features = theirs.forward_features(x)
    assert features.shape == ours.forward_features(x).shape == (2, 1280, 7, 7)  # stem stride 1


@pytest.mark.parametrize("block", ["standard", "se", "condconv"])
def test_timm_reference_with_condnets_weights_computes_the_same(block):
    ours = trained_like(condnet.build_model(f"paper-{block}"), resolution=32, logit_spread=0.25)
    theirs = copy_condnet_weights(ours, build_timm(block))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = ours.eval()(x)
        torch.testing.assert_close(theirs.eval()(x), expected, rtol=1e-4, atol=1e-5)
        # Train mode: batch statistics, and the running statistics both update alike.
        expected = ours.train()(x)
        torch.testing.assert_close(theirs.train()(x), expected, rtol=1e-4, atol=1e-5)
    assert expected.std() > 0.1  # outputs that vary: a wrong copy could not match by chance
    mapped = timm_names(ours, theirs)
    for name, value in ours.state_dict().items():
        if name in mapped and "running" in name:
            torch.testing.assert_close(theirs.state_dict()[mapped[name]], value)


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
