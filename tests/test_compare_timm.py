"""benchmarks/compare_timm.py: the timm reference is the same network; a tiny race runs."""

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


def test_a_tiny_race_reports_every_metric(capsys):
    args = compare_timm.parse_args(["--blocks", "standard", "--rounds", "1", "--iters", "1",
                                    "--resolution", "16"])  # fmt: skip
    medians = compare_timm.race("standard", args)
    assert set(medians) == {"condnet", "timm"}
    for side in medians.values():
        assert set(side) == set(compare_timm.METRICS) and all(v > 0 for v in side.values())
    table = compare_timm.report({"standard": medians}, rate=50.0, resolution=16)
    assert table.count("standard") == 3 and "GFLOP/s" in table


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        compare_timm.parse_args(["--blocks", "resnet"])
