"""The fast inference form computes what the model computes; the allocator setting is safe."""

import copy

import pytest
import torch

import condnet
from condnet.deploy.inference import PointwiseConv2d, channels_last_weights, prepare_inference
from condnet.memory import retain_freed_memory
from condnet.models.condconv import CondConv2d
from condnet.models.condconv_forms import experts_channels_last

TINY = {"widths": [8, 8, 16, 16, 24, 24], "repeats": 1, "head_channels": 32}


def trained_like(name: str) -> condnet.CondNet:
    """A small preset with non-trivial BN statistics, so folding them is really exercised."""
    torch.manual_seed(0)
    model = condnet.build_model(name, num_classes=7, **TINY).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 24, 24) * 2 + 0.5)
    return model.eval()


@pytest.mark.parametrize("name", condnet.list_models())
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_prepare_inference_matches_the_model(name, batch, layout):
    model = trained_like(name)
    fast = prepare_inference(model)
    x = torch.randn(batch, 3, 24, 24).contiguous(memory_format=layout)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)
    assert not fast.training
    assert any(isinstance(m, PointwiseConv2d) for m in fast.modules())  # the batch-1 matmul path
    assert isinstance(model.stages[0][0].expand.bn, torch.nn.BatchNorm2d)  # the model is unchanged


def test_channels_last_weights_converts_4d_and_5d_parameters_only():
    model = channels_last_weights(condnet.build_model("paper-condconv", **TINY))
    formats = {4: torch.channels_last, 5: torch.channels_last_3d}
    for param in model.parameters():
        assert param.is_contiguous(memory_format=formats.get(param.dim(), torch.contiguous_format))
    assert any(p.dim() == 5 for p in model.parameters())
    # The CondConv experts, (in, k, k, out) per expert: the mixing reads them with no copy.
    layer = next(m for m in model.modules() if isinstance(m, CondConv2d))
    experts = experts_channels_last(layer.weight)
    assert experts.data_ptr() == layer.weight.data_ptr() and experts.is_contiguous()


def test_retain_freed_memory_applies_and_changes_no_result(monkeypatch):
    model = trained_like("paper-se")
    x = torch.randn(4, 3, 24, 24)
    with torch.no_grad():
        before = model(x)
        assert retain_freed_memory() is True  # Linux with glibc, as on the CI machine
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    monkeypatch.setenv("CONDNET_RETAIN_MEMORY", "0")
    assert retain_freed_memory() is False


def test_own_training_loop_lines_from_the_readme_train_the_same_network():
    # The README's two lines for a training loop of one's own: the same step, faster layout.
    assert condnet.retain_freed_memory() is True
    torch.manual_seed(0)
    plain = condnet.build_model("paper-condconv", **TINY)
    fast = condnet.channels_last_weights(copy.deepcopy(plain))
    images, labels = torch.randn(4, 3, 24, 24), torch.tensor([0, 1, 2, 3])
    for model, x in ((plain, images), (fast, images.contiguous(memory_format=torch.channels_last))):
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        loss.backward()
        model.loss = loss.item()
    assert fast.loss == pytest.approx(plain.loss, rel=1e-5)
    for a, b in zip(plain.parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-5)
