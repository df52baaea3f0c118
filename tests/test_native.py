"""The compiled per-example depthwise kernel against the portable grouped convolution."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from condnet.models import native
from condnet.models.condconv import CondConv2d


@pytest.fixture
def kernel():
    """The compiled operators, built or loaded when a test first needs them (not at
    collection: a first build takes about 40 s); a machine without a compiler skips them."""
    if not native.ensure_built():
        pytest.skip(f"no compiled kernel here: {native.why_not()}")


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


def test_disabled_or_failed_build_falls_back_to_the_grouped_conv(monkeypatch, tmp_path):
    layer = CondConv2d(8, 8, 3, groups=8, num_experts=4)
    x = torch.randn(4, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    monkeypatch.setenv("CONDNET_NATIVE", "0")
    assert not native.available() and "CONDNET_NATIVE=0" in native.why_not()
    assert not native.ensure_built()  # turned off: not even built
    assert layer.choose_form(x) == "grouped"
    monkeypatch.delenv("CONDNET_NATIVE")
    # No compiler: the build fails in its child process and says why in one line.
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    assert not native.build(tmp_path / "build", quiet=True)
    assert native.why_not() and not native.library(tmp_path / "build").exists()


NOT_BUILT = """
import sys, torch
from condnet.models import native
from condnet.models.condconv import CondConv2d
layer = CondConv2d(8, 8, 3, groups=8, num_experts=4)
x = torch.randn(4, 8, 6, 6).contiguous(memory_format=torch.channels_last)
out = layer(x, torch.rand(4, 4))
print(native.available(), layer.choose_form(x), native.library().exists(), native.why_not())
"""


def test_a_forward_pass_never_builds_the_kernel(tmp_path):
    """Where no build exists, CondConv's forward pass loads nothing, compiles nothing, prints
    nothing, and runs the grouped form (a fresh process: this one may have loaded the kernel)."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", NOT_BUILT], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    available, form, built, why = done.stdout.strip().split(" ", 3)
    assert (available, form, built) == ("False", "grouped", "False") and "not built yet" in why
    assert done.stderr == "" and not (tmp_path / "condnet").exists()


@needs_kernel
def test_the_operators_pass_opcheck():
    """Schema, autograd registration, fake (meta) implementations and AOT dispatch, per op."""
    x = torch.randn(2, 8, 7, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    kernels = torch.randn(2, 3, 3, 8, requires_grad=True)
    bias = torch.randn(8, requires_grad=True)
    ops = torch.ops.condnet
    torch.library.opcheck(ops.depthwise.default, (x, kernels, bias, 2, 1))
    torch.library.opcheck(ops.depthwise.default, (x, kernels, None, 1, 1))
    grad = torch.randn(2, 8, 4, 3).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(
        ops.depthwise_backward_input.default, (grad, kernels.detach(), 7, 6, 2, 1)
    )
    torch.library.opcheck(ops.depthwise_backward_kernels.default, (grad, x.detach(), 3, 2, 1))


@needs_kernel
def test_a_compiled_block_c_training_step_has_no_graph_break_at_the_kernel(monkeypatch):
    """fullgraph=True: a graph break anywhere (the pybind kernel was one) is an error."""
    from condnet.models.blocks import CondConvBlock
    from condnet.models.layout import channels_last_weights

    block = channels_last_weights(CondConvBlock(8, 8))
    x = torch.randn(4, 8, 8, 8).contiguous(memory_format=torch.channels_last)
    expanded = torch.randn(4, 32, 8, 8).contiguous(memory_format=torch.channels_last)
    assert block.depthwise.conv.choose_form(expanded) == "native"  # the kernel is in the step

    def step(x):
        return block(x).square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    loss = compiled(x)
    loss.backward()
    grads = [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    want = step(x)
    want.backward()
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-5)
    for got, expected in zip(grads, [p.grad for p in block.parameters()], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@needs_kernel
def test_runs_under_cpu_autocast():
    layer = CondConv2d(16, 16, 3, groups=16, num_experts=4)
    x = torch.randn(3, 16, 6, 6).contiguous(memory_format=torch.channels_last)
    r = torch.rand(3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x, r)
    layer.formulation = "grouped"
    torch.testing.assert_close(out.float(), layer(x, r), rtol=2e-2, atol=2e-2)
