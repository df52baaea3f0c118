"""BN folding: same outputs, no BN left, the input model untouched."""

import pytest
import torch
from torch import nn

import condnet
from condnet.deploy.fuse import fold_batch_norm, fuse
from condnet.models.blocks import block_uses
from condnet.models.condconv import CondConv2d
from tests.deploy_helpers import small_model, trained_like

BLOCKS = ["standard", "se", "condconv"]


def count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("name", condnet.list_models())
def test_paper_presets_fused_match_unfused(name):
    model = trained_like(condnet.build_model(name), resolution=56, logit_spread=0.25)
    fused = fuse(model)
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        want, got = model(x), fused(x)
    assert (want[0] - want[1]).abs().max() > 0.1  # the logits depend on the image
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert count(model, nn.BatchNorm2d) == 50 and count(fused, nn.BatchNorm2d) == 0


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("routing", ["block", "conv"])
def test_fused_small_models_and_input_untouched(block, routing):
    options = {"routing": routing} if block_uses(block, "routing") else {}
    model = small_model(block, **options).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse(model)
    assert model.training and not fused.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    x = torch.randn(5, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-4)
    convs = [m for m in fused.modules() if isinstance(m, (nn.Conv2d, CondConv2d))]
    assert convs and all(c.bias is not None for c in convs)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    bn_params = sum(p.numel() for m in bns for p in m.parameters())
    bias_params = sum(c.bias.numel() for c in convs)
    total = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in fused.parameters()) == total - bn_params + bias_params


def test_fold_condconv_by_hand():
    conv = CondConv2d(4, 6, 3, groups=2, num_experts=3)
    bn = nn.BatchNorm2d(6).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(-1, 1)
        bn.bias.uniform_(-1, 1)
    folded = fold_batch_norm(conv, bn)
    x, r = torch.randn(3, 4, 7, 7), torch.rand(3, 3)
    with torch.no_grad():
        torch.testing.assert_close(folded(x, r), bn(conv(x, r)), rtol=1e-5, atol=1e-5)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(folded.weight[2], conv.weight[2] * scale[:, None, None, None])
    torch.testing.assert_close(folded.bias, bn.bias - bn.running_mean * scale)
    assert conv.bias is None  # the original layer is not changed


@pytest.mark.parametrize("kind", ["conv", "condconv"])
def test_fold_keeps_a_conv_s_own_bias(kind):
    """A conv that has a bias already: BN scales it too, ``scale * (Wx + b) + shift``."""
    conv = nn.Conv2d(4, 6, 3, padding=1) if kind == "conv" else CondConv2d(4, 6, 3)
    if kind == "condconv":
        conv.bias = nn.Parameter(torch.zeros(6))
    bn = nn.BatchNorm2d(6).eval()
    with torch.no_grad():
        conv.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(-2, 2)
        bn.bias.uniform_(-1, 1)
    folded = fold_batch_norm(conv, bn)
    x = torch.randn(3, 4, 7, 7)
    args = (x,) if kind == "conv" else (x, torch.rand(3, 4))
    with torch.no_grad():
        torch.testing.assert_close(folded(*args), bn(conv(*args)), rtol=1e-5, atol=1e-5)
