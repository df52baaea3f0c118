"""The compiled per-example depthwise kernel against the portable grouped convolution."""

import pytest
import torch
import torch.nn.functional as F

from condnet.models import native
from condnet.models.condconv import CondConv2d


@pytest.fixture
def kernel():
    """The compiled kernel, built or loaded when a test first needs it (not at collection:
    a first build takes about 40 s); a machine without a compiler skips what needs it."""
    module = native.kernel()
    if module is None:
        pytest.skip(f"no compiled kernel here: {native.why_not()}")
    return module


needs_kernel = pytest.mark.usefixtures("kernel")


def grouped_reference(x, kernels, bias, stride, pad):
    """The same function as one grouped conv with the batch folded into the groups."""
    batch, channels, height, width = x.shape
    weight = kernels.permute(0, 3, 1, 2).reshape(batch * channels, 1, *kernels.shape[1:3])
    out = F.conv2d(
        x.reshape(1, batch * channels, height, width),
        weight,
        None if bias is None else bias.repeat(batch),
        stride,
        pad,
        groups=batch * channels,
    )
    return out.reshape(batch, channels, *out.shape[2:])


@needs_kernel
@pytest.mark.parametrize("channels", [8, 12, 40, 64])  # 12: no 8-lane blocks; 40: 32 + 8
@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("same_padding", [True, False])
@pytest.mark.parametrize("bias", [False, True])
def test_forward_and_backward_match_the_grouped_conv(
    channels, kernel_size, stride, same_padding, bias
):
    pad = kernel_size // 2 if same_padding else 0
    x = torch.randn(3, channels, 9, 8).contiguous(memory_format=torch.channels_last)
    kernels = torch.randn(3, kernel_size, kernel_size, channels)
    b = torch.randn(channels) if bias else None
    inputs = [t.requires_grad_() for t in (x, kernels, b) if t is not None]
    out = native.per_example_depthwise(x, kernels, b, stride, pad)
    want = grouped_reference(x, kernels, b, stride, pad)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last)

    grad = torch.randn_like(want)
    got = torch.autograd.grad(out, inputs, grad)
    expected = torch.autograd.grad(want, inputs, grad)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


@needs_kernel
def test_auto_runs_channels_last_float32_depthwise_in_the_kernel(monkeypatch):
    calls = []
    real = native.per_example_depthwise
    monkeypatch.setattr(native, "per_example_depthwise", lambda *a: calls.append(a) or real(*a))
    layer = CondConv2d(8, 8, 3, groups=8, num_experts=4)
    x = torch.randn(4, 8, 6, 6)
    layer(x.contiguous(memory_format=torch.channels_last), torch.rand(4, 4))
    layer(x[:1].contiguous(memory_format=torch.channels_last), torch.rand(1, 4))  # one image
    assert len(calls) == 2
    layer(x, torch.rand(4, 4))  # NCHW: the grouped conv reads it as it is
    x64 = x.double().contiguous(memory_format=torch.channels_last)
    layer.double()(x64, torch.rand(4, 4).double())
    assert len(calls) == 2


def test_disabled_or_failed_build_falls_back_to_the_grouped_conv(monkeypatch):
    layer = CondConv2d(8, 8, 3, groups=8, num_experts=4)
    x = torch.randn(4, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    monkeypatch.setenv("CONDNET_NATIVE", "0")
    assert native.kernel() is None and "CONDNET_NATIVE=0" in native.why_not()
    assert layer.choose_form(x) == "grouped"

    monkeypatch.delenv("CONDNET_NATIVE")
    monkeypatch.setattr(native, "_loaded", {})

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension\ng++: command not found")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_compiler)
    monkeypatch.setattr(
        torch.utils.cpp_extension, "_get_build_directory", lambda *a, **k: "/nonexistent"
    )
    assert native.kernel() is None
    assert native.why_not() == "g++: command not found"
    assert layer.choose_form(x) == "grouped"
    r = torch.rand(4, 4)
    out = layer(x, r)
    layer.formulation = "grouped"
    torch.testing.assert_close(out, layer(x, r))


@needs_kernel
def test_runs_under_cpu_autocast():
    layer = CondConv2d(16, 16, 3, groups=16, num_experts=4)
    x = torch.randn(3, 16, 6, 6).contiguous(memory_format=torch.channels_last)
    r = torch.rand(3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x, r)
    layer.formulation = "grouped"
    torch.testing.assert_close(out.float(), layer(x, r), rtol=2e-2, atol=2e-2)
