"""The three presets against the paper's Table 1 and Figure 2, over the whole registry."""

import dataclasses

import pytest
import torch
from torch import nn

import condnet
from condnet.errors import CondnetError
from condnet.models import BLOCKS, CondConv2d, Routing, get_spec
from condnet.models.blocks import SqueezeExcite, block_uses

PRESETS = condnet.list_models()
# The paper's Table 1: (Ni, No, stride) of every block, in order.
PAPER_BLOCKS = (
    [(16, 16, 1), (16, 24, 1), (24, 24, 1), (24, 40, 2)]
    + [(40, 40, 1)] * 2
    + [(40, 80, 2)]
    + [(80, 80, 1)] * 3
    + [(80, 160, 2)]
    + [(160, 160, 1)] * 4
    + [(160, 320, 1)]
)


def analytic_params(kind: str, classes: int = 100, experts: int = 4) -> int:
    """Parameter count from the paper's Table 1 and Figure 2 by hand: the cross-check for the
    builder."""
    total = 3 * 16 * 9 + 2 * 16  # stem conv + BN
    for cin, cout, _ in PAPER_BLOCKS:
        inner = 4 * cin
        convs = cin * inner + 9 * inner + inner * cout
        total += 2 * (inner + inner + cout)  # three BNs
        if kind != "standard":
            r = inner // 4
            total += inner * r + r + r * inner + inner  # SE linears with bias
        if kind == "condconv":
            convs = experts * convs + cin * experts + experts  # experts + shared routing
        total += convs
    return total + 320 * 1280 + 2 * 1280 + 1280 * classes + classes


@pytest.mark.parametrize("name", PRESETS)
def test_shape_finite_and_every_parameter_gets_a_gradient(name):
    model = condnet.build_model(name, num_classes=7)
    out = model(torch.randn(2, 3, 56, 56))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


@pytest.mark.parametrize("name", PRESETS)
def test_parameter_count_matches_the_analytic_count_of_table_1(name):
    kind = name.removeprefix("paper-")
    model = condnet.build_model(name)
    assert sum(p.numel() for p in model.parameters()) == analytic_params(kind)


def test_known_parameter_totals():
    counts = {n: sum(p.numel() for p in condnet.build_model(n).parameters()) for n in PRESETS}
    assert counts == {"paper-standard": 2029572, "paper-se": 3316684, "paper-condconv": 7715468}


@pytest.mark.parametrize("name", PRESETS)
def test_layers_match_paper_table_1_and_figure_2(name):
    model = condnet.build_model(name)
    kind = name.removeprefix("paper-")
    stem = model.stem.conv
    assert (stem.in_channels, stem.out_channels, stem.kernel_size, stem.stride) == (
        3,
        16,
        (3, 3),
        (1, 1),
    )
    blocks = [b for stage in model.stages for b in stage]
    assert [(b.in_channels, b.out_channels, b.stride) for b in blocks] == PAPER_BLOCKS
    x = model.stem(torch.randn(1, 3, 56, 56))
    shapes = []
    for block in blocks:
        cin, cout, stride = block.in_channels, block.out_channels, block.stride
        inner = 4 * cin
        assert block.has_identity == (cin == cout and stride == 1)
        conv_type = CondConv2d if kind == "condconv" else nn.Conv2d
        expand, dw, project = block.expand.conv, block.depthwise.conv, block.project.conv
        for conv in (expand, dw, project):
            assert type(conv) is conv_type and conv.padding == (
                (0, 0) if conv is not dw else (1, 1)
            )
        assert (expand.in_channels, expand.out_channels, expand.groups) == (cin, inner, 1)
        assert (dw.in_channels, dw.out_channels, dw.groups, dw.stride) == (
            inner,
            inner,
            inner,
            (stride,) * 2,
        )
        assert (project.in_channels, project.out_channels, project.groups) == (inner, cout, 1)
        assert isinstance(block.project.act, nn.Identity)  # no activation after projecting
        assert isinstance(block.expand.act, nn.ReLU) and isinstance(block.depthwise.act, nn.ReLU)
        if kind == "standard":
            assert isinstance(block.se, nn.Identity)
        else:
            se = block.se
            assert isinstance(se, SqueezeExcite)
            assert (se.fc1.in_features, se.fc1.out_features, se.fc2.out_features) == (
                inner,
                inner // 4,
                inner,
            )
            assert se.fc1.bias is not None and se.fc2.bias is not None
        if kind == "condconv":
            assert isinstance(block.routing, Routing)
            assert (block.routing.fc.in_features, block.routing.fc.out_features) == (cin, 4)
            assert block.routing.fc.bias is not None
            r = block.routing(torch.randn(2, cin, 5, 5))
            assert ((r > 0) & (r < 1)).all()  # sigmoid
            for conv in (expand, dw, project):
                assert conv.weight.shape[0] == 4 and conv.router is None
        x = block(x)
        shapes.append(tuple(x.shape[1:]))
    assert shapes[-1] == (320, 7, 7) and shapes[3] == (40, 28, 28) and shapes[6] == (80, 14, 14)
    assert model.forward_features(torch.randn(1, 3, 56, 56)).shape == (1, 1280, 7, 7)
    assert model.classifier.bias is not None and model.classifier.in_features == 1280


def test_batch_norm_settings():
    for m in condnet.build_model("paper-se").modules():
        if isinstance(m, nn.BatchNorm2d):
            assert (m.eps, m.momentum) == (1e-5, 0.1)
        if isinstance(m, nn.Conv2d):
            assert m.bias is None


def test_forward_head_pre_logits():
    model = condnet.build_model("paper-standard").eval()
    feats = model.forward_features(torch.randn(2, 3, 56, 56))
    assert model.forward_head(feats, pre_logits=True).shape == (2, 1280)
    torch.testing.assert_close(model.forward_head(feats), model.classifier(feats.mean((2, 3))))


def test_per_conv_routing():
    model = condnet.build_model("paper-condconv", routing="conv")
    block = model.stages[2][0]
    assert block.routing is None
    assert block.expand.conv.router.fc.in_features == 24
    assert block.project.conv.router.fc.in_features == 96
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_overrides_reach_every_knob():
    spec = get_spec(
        "paper-se",
        widths=[8, 8, 16, 16, 32, 32],
        repeats=[1, 1, 2, 1, 1, 1],
        strides=[1, 2, 1, 2, 1, 1],
        expansion=6,
        kernel_size=5,
        block=["standard", "se", "condconv", "se", "condconv", "standard"],
        se_ratio=8,
        num_experts=2,
        routing="conv",
        stem_stride=2,
        stem_channels=8,
        in_channels=1,
        num_classes=10,
        head_channels=64,
    )
    assert spec.stem.stride == 2 and spec.stem.channels == 8 and spec.in_channels == 1
    assert [s.block for s in spec.stages][2] == "condconv" and spec.stages[4].num_experts == 2
    model = condnet.CondNet(spec)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    block = model.stages[2][0]
    assert block.depthwise.conv.kernel_size == (5, 5) and block.expand.conv.out_channels == 48
    assert model.stages[1][0].se.fc1.out_features == 48 // 8


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"kernel_size": 4}, "kernel_size: expected an odd kernel size"),
        ({"num_experts": 0}, r"num_experts: expected an integer \(>= 1\)"),
        ({"block": "resnet"}, "block: expected one of condconv, se, standard"),
        ({"widths": [1, 2]}, "widths: expected one value or a list of 6"),
        ({"routing": "layer"}, "routing: expected one of block, conv"),
        ({"se_ratio": 1000}, "se_ratio: must be at most"),
        ({"num_classes": 0}, r"num_classes: expected an integer \(>= 1\)"),
        ({"strides": 1.5}, "stride: expected an integer"),
        ({"depth": 3}, "unknown model override 'depth'"),
    ],
)
def test_bad_overrides_are_clear_errors(overrides, message):
    with pytest.raises(CondnetError, match=message):
        condnet.build_model("paper-se", **overrides)


def test_unknown_model_lists_names():
    with pytest.raises(CondnetError, match="available: paper-condconv, paper-se, paper-standard"):
        condnet.build_model("resnet50")


def test_spec_round_trip_and_registry():
    spec = get_spec("paper-condconv", num_experts=8)
    assert condnet.NetSpec.from_dict(spec.to_dict()) == spec
    assert sorted(BLOCKS) == ["condconv", "se", "standard"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.num_classes = 3


@pytest.mark.parametrize("name", PRESETS)
def test_overfits_a_small_batch(name):
    model = condnet.build_model(name, num_classes=4)
    x, y = torch.randn(8, 3, 24, 24), torch.arange(8) % 4
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    # 60 steps: at 40, Adam's loss on block C can still be in a spike on two threads (0.29).
    for _ in range(60):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


@pytest.mark.parametrize(
    "name, overrides, message",
    [
        (
            "paper-standard",
            {"num_experts": 8},
            r"num_experts: not used by block standard \(used by: condconv\)",
        ),
        ("paper-se", {"routing_activation": "softmax"}, "routing_activation: not used by block se"),
        (
            "paper-standard",
            {"se_ratio": 8},
            r"se_ratio: not used by block standard \(used by: condconv, se\)",
        ),
        (
            "paper-se",
            {"stages": [{"channels": 8, "repeats": 1, "block": "se", "routing": "conv"}]},
            r"stages\[0\].routing: not used by block se",
        ),
    ],
)
def test_an_override_no_block_uses_is_an_error_naming_the_key(name, overrides, message):
    with pytest.raises(CondnetError, match=message):
        condnet.build_model(name, **overrides)


def test_the_registry_says_what_each_block_uses():
    assert [block_uses(b, "se_ratio") for b in ("standard", "se", "condconv")] == [
        False,
        True,
        True,
    ]
    assert [block_uses(b, "num_experts") for b in ("standard", "se", "condconv")] == [
        False,
        False,
        True,
    ]
    # A network mixing kinds takes an option that one of its kinds uses.
    spec = get_spec("paper-standard", block=["standard"] * 5 + ["condconv"], num_experts=2)
    assert spec.stages[5].num_experts == 2
