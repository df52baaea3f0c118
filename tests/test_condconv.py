"""CondConv2d against the definition: a per-example mixed kernel applied as an ordinary conv."""

import pytest
import torch
import torch.nn.functional as F

import condnet
from condnet.errors import CondnetError
from condnet.models import condconv_forms as forms
from condnet.models import native
from condnet.models.condconv import FORMULATIONS, CondConv2d, set_formulation


def naive(layer: CondConv2d, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    outs = []
    for xi, ri in zip(x, r, strict=False):
        w = sum(ri[m] * layer.weight[m] for m in range(layer.num_experts))
        outs.append(F.conv2d(xi[None], w, None, layer.stride, layer.padding, groups=layer.groups))
    return torch.cat(outs)


@pytest.mark.parametrize("formulation", FORMULATIONS)
@pytest.mark.parametrize("depthwise", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("kernel_size", [1, 3])
@pytest.mark.parametrize("size", [9, 4])  # 4x4: `auto` takes the stacked form for 1x1 convs
# channels_last: `auto` runs depthwise batches in the compiled kernel and 1x1 convs as row products
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_matches_per_example_loop(depthwise, stride, batch, kernel_size, formulation, size, layout):
    cin, cout = (12, 12) if depthwise else (6, 10)
    layer = CondConv2d(
        cin, cout, kernel_size, stride, groups=cin if depthwise else 1, num_experts=3
    )
    layer.formulation = formulation
    x = torch.randn(batch, cin, size, size).contiguous(memory_format=layout).requires_grad_()
    r = torch.rand(batch, 3, requires_grad=True)
    out = layer(x, r)
    ref_layer_out = naive(layer, x, r)
    torch.testing.assert_close(out, ref_layer_out, rtol=1e-5, atol=1e-5)

    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, r, layer.weight), grad)
    want = torch.autograd.grad(ref_layer_out, (x, r, layer.weight), grad)
    for g, w in zip(got, want, strict=False):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("formulation", FORMULATIONS)
@pytest.mark.parametrize("kernel_size", [1, 3])
def test_grouped_not_depthwise_and_own_routing(formulation, kernel_size):
    layer = CondConv2d(8, 12, kernel_size, 1, groups=4, num_experts=2, router="sigmoid")
    layer.formulation = formulation
    x = torch.randn(3, 8, 7, 7)
    torch.testing.assert_close(layer(x), naive(layer, x, layer.router(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("formulation", FORMULATIONS)
@pytest.mark.parametrize("kernel_size", [1, 3])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("size", [9, 4])  # 4x4: `auto` takes the stacked form for 1x1 convs
def test_bias_is_added_after_mixing(formulation, kernel_size, groups, size):
    layer = with_bias(CondConv2d(6, 8, kernel_size, 2, groups=groups, num_experts=3))
    layer.formulation = formulation
    x, r = torch.randn(4, 6, size, size), torch.rand(4, 3)
    want = naive(layer, x, r) + layer.bias[:, None, None]
    torch.testing.assert_close(layer(x, r), want, rtol=1e-5, atol=1e-5)
    assert CondConv2d(6, 8, 3).bias is None and "bias" not in CondConv2d(6, 8, 3).state_dict()


def with_bias(layer: CondConv2d) -> CondConv2d:
    """`layer` with a random per-output-channel bias, as BN folding gives it one."""
    layer.bias = torch.nn.Parameter(torch.randn(layer.out_channels))
    return layer


def test_formulations_agree_on_a_whole_network_with_gradients():
    model = condnet.build_model("paper-condconv", widths=8, repeats=1, head_channels=32).train()
    x = torch.randn(3, 3, 24, 24)
    results = []
    for formulation in FORMULATIONS:
        set_formulation(model, formulation)
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    out_a, grads_a = results[0]
    for out_b, grads_b in results[1:]:
        torch.testing.assert_close(out_a, out_b, rtol=1e-5, atol=1e-5)
        for a, b in zip(grads_a, grads_b, strict=False):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def spy_conv2d(monkeypatch, record) -> list:
    """Every later `F.conv2d` call appends `record(args, kwargs)` to the returned list."""
    calls, real = [], F.conv2d
    monkeypatch.setattr(F, "conv2d", lambda *a, **k: calls.append(record(a, k)) or real(*a, **k))
    return calls


def test_batched_formulation_has_no_batch_dependent_groups(monkeypatch):
    layer = CondConv2d(6, 6, 3, groups=6, num_experts=4)
    layer.formulation = "batched"
    groups = spy_conv2d(monkeypatch, lambda a, k: k["groups"])
    for batch in (1, 5):
        layer(torch.randn(batch, 6, 5, 5), torch.rand(batch, 4))
    assert set(groups) == {6}  # the plain conv's groups, whatever the batch


def test_batch_one_is_one_plain_conv(monkeypatch):
    layer = CondConv2d(6, 8, 3, num_experts=4)
    calls = spy_conv2d(monkeypatch, lambda a, k: a[1].shape)
    layer(torch.randn(1, 6, 5, 5), torch.rand(1, 4))
    assert calls == [torch.Size([8, 6, 3, 3])]  # one conv with a plain conv's weight shape


def test_bad_routing_shape_and_groups():
    layer = CondConv2d(4, 4, 3, num_experts=4)
    with pytest.raises(CondnetError, match="routing_weights must have shape"):
        layer(torch.randn(2, 4, 5, 5), torch.rand(2, 3))
    with pytest.raises(CondnetError, match="needs routing_weights"):
        layer(torch.randn(2, 4, 5, 5))
    with pytest.raises(CondnetError, match="groups=3 must divide"):
        CondConv2d(4, 4, 3, groups=3)
    with pytest.raises(CondnetError, match="formulation must be one of auto, grouped, batched"):
        layer.formulation = "loop"


def test_experts_initialised_independently():
    layer = CondConv2d(16, 16, 3, num_experts=4)
    w = layer.weight.detach()
    assert not torch.allclose(w[0], w[1])
    bound = 1 / (16 * 9) ** 0.5  # nn.Conv2d's default: kaiming_uniform(a=sqrt(5))
    # Uniform up to the bound: 9,216 draws come within 1 % of it (else the bound is smaller).
    assert 0.99 * bound <= w.abs().max() <= bound
    for expert in w:
        assert 0.99 * bound <= expert.abs().max() <= bound


def test_auto_picks_the_stacked_form_for_small_1x1_maps(monkeypatch):
    layer = CondConv2d(6, 8, 1, num_experts=4)
    shapes = spy_conv2d(monkeypatch, lambda a, k: a[1].shape)
    layer(torch.randn(5, 6, 4, 4), torch.rand(5, 4))
    assert shapes == [torch.Size([8, 24, 1, 1])]  # one dense conv over 4 scaled input copies


def every_path(layer: CondConv2d, x: torch.Tensor, r: torch.Tensor) -> dict[str, torch.Tensor]:
    """The layer's output by each formulation and by each form that applies to it, the forms
    also on a channels_last copy of `x`."""
    outs = {}
    for formulation in FORMULATIONS:
        layer.formulation = formulation
        outs[formulation] = layer(x, r)
    args = (layer.weight, r, layer.bias, layer.stride, layer.padding, layer.groups)
    for layout in (torch.contiguous_format, torch.channels_last):
        xl = x.contiguous(memory_format=layout)
        for name, form in forms.FORMS.items():
            if forms.applies(name, layer.weight, layer.groups, xl):
                outs[f"{name}, {layout}"] = form(xl, *args)
    return outs


@pytest.mark.parametrize("padding", [1, 2])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("groups", [1, 2, 6])  # 6: depthwise
@pytest.mark.parametrize("kernel_size", [1, 3])
def test_padding_is_honoured_as_by_conv2d(padding, stride, groups, kernel_size):
    layer = with_bias(CondConv2d(6, 6, kernel_size, stride, padding, groups, num_experts=3))
    x, r = torch.randn(3, 6, 5, 5), torch.rand(3, 3)
    want = naive(layer, x, r) + layer.bias[:, None, None]
    plain = torch.nn.Conv2d(6, 6, kernel_size, stride, padding, groups=groups)
    assert want.shape == plain(x).shape  # the reference has nn.Conv2d's output size
    outs = every_path(layer, x, r)
    assert len(outs) >= 6  # the three formulations, and grouped and mixture in both layouts
    for name, out in outs.items():
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5, msg=name)


def test_inference_mixes_1x1_kernels_chunk_by_chunk(monkeypatch):
    monkeypatch.setattr(forms, "MIXING_CACHE_FLOATS", 1)  # chunks of MIN_MIXING_CHUNK = 8
    layer = with_bias(CondConv2d(6, 10, 1, num_experts=3))
    x = torch.randn(20, 6, 5, 5).contiguous(memory_format=torch.channels_last)
    r = torch.rand(20, 3)
    chunks, real = [], forms.rows_times_kernels
    monkeypatch.setattr(
        forms, "rows_times_kernels", lambda *a, **k: chunks.append(len(a[0])) or real(*a, **k)
    )
    with torch.no_grad():
        out = layer(x, r)
    assert chunks == [8, 8, 4]
    torch.testing.assert_close(
        out, naive(layer, x, r) + layer.bias[:, None, None], rtol=1e-5, atol=1e-5
    )
    assert out.is_contiguous(memory_format=torch.channels_last)
    layer(x, r)  # with autograd: one product for the batch
    assert chunks == [8, 8, 4, 20]


@pytest.mark.parametrize("grad", [True, False], ids=["training", "inference"])
def test_the_gpu_rule_keeps_channels_last_and_is_exact_in_every_layer(grad):
    """What `auto` picks off the CPU, run here on the CPU: every CondConv layer of the paper's
    network, on its own channels_last input, gives a channels_last output equal to the
    per-example definition (for the bf16 GPU path the layout matters: a copy to NCHW after
    each depthwise layer costs a pass over the map and a layout change for the next)."""
    from condnet.models.layout import channels_last_weights

    model = channels_last_weights(condnet.build_model("paper-condconv", num_classes=10))
    inputs = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args: inputs.setdefault(mod, args))
        for m in model.modules()
        if isinstance(m, CondConv2d)
    ]
    model.eval()(torch.randn(6, 3, 56, 56).contiguous(memory_format=torch.channels_last))
    for hook in hooks:
        hook.remove()
    picked = set()
    for layer, (x, r) in inputs.items():
        x = x.contiguous(memory_format=torch.channels_last)
        choice = layer.choose_form(x, "cuda")
        picked.add(choice)
        form = forms.FORMS[choice]
        with torch.set_grad_enabled(grad):
            out = form(x, layer.weight, r, layer.bias, layer.stride, layer.padding, layer.groups)
        assert out.is_contiguous(memory_format=torch.channels_last), layer
        want = naive(layer, x, r)
        torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4, msg=str(layer))
    assert picked == {"rows", "mixture"} and len(inputs) == 48  # 16 blocks x 3 CondConvs


def test_off_the_cpu_inference_mixes_the_whole_batch_at_once(monkeypatch):
    """The CPU's cache-sized chunks would be 16 tiny products per layer at batch 256 on a GPU,
    each a node torch.compile unrolls; off the CPU (here the meta device) the batch is one."""
    monkeypatch.setattr(forms, "MIXING_CACHE_FLOATS", 1)
    layer = CondConv2d(6, 10, 1, num_experts=3).to("meta")
    chunks, real = [], forms.rows_times_kernels
    monkeypatch.setattr(
        forms, "rows_times_kernels", lambda *a, **k: chunks.append(len(a[0])) or real(*a, **k)
    )
    x = torch.empty(20, 6, 5, 5, device="meta").contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = layer(x, torch.empty(20, 3, device="meta"))
    assert chunks == [20] and out.shape == (20, 10, 5, 5)


LAYER_SHAPES = {  # (in, out, kernel, stride, groups)
    "1x1": (6, 10, 1, 1, 1),
    "1x1 strided": (6, 10, 1, 2, 1),
    "1x1 grouped": (6, 10, 1, 1, 2),
    "3x3": (6, 10, 3, 1, 1),
    "3x3 depthwise": (12, 12, 3, 1, 12),
    "5x5 depthwise strided": (12, 12, 5, 2, 12),
}


@pytest.mark.parametrize("name", list(forms.FORMS))
def test_every_form_is_the_per_example_convolution_where_it_applies(name):
    """Each pure form, on every layer shape and layout it applies to: the output, and the
    gradients of the input, the routing weights and the experts, equal the definition's."""
    form, ran = forms.FORMS[name], []
    for shape, (cin, cout, k, stride, groups) in LAYER_SHAPES.items():
        layer = with_bias(CondConv2d(cin, cout, k, stride, groups=groups, num_experts=3))
        for layout in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(4, cin, 7, 7).contiguous(memory_format=layout).requires_grad_()
            if not forms.applies(name, layer.weight, groups, x):
                continue
            r = torch.rand(4, 3, requires_grad=True)
            args = (layer.weight, r, layer.bias, layer.stride, layer.padding, layer.groups)
            out = form(x, *args)
            want = naive(layer, x, r) + layer.bias[:, None, None]
            torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5, msg=shape)
            grad = torch.randn_like(out)
            inputs = (x, r, layer.weight, layer.bias)
            got, expected = (torch.autograd.grad(o, inputs, grad) for o in (out, want))
            for g, w in zip(got, expected, strict=True):
                torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5, msg=shape)
            ran.append(shape)
    assert ran  # every form applies to some layer here


def test_which_forms_apply():
    x = torch.randn(2, 12, 5, 5).contiguous(memory_format=torch.channels_last)
    depthwise, pointwise = CondConv2d(12, 12, 3, groups=12), CondConv2d(12, 8, 1, groups=2)
    dense = CondConv2d(12, 8, 1)
    applying = {
        layer: {n for n in forms.FORMS if forms.applies(n, layer.weight, layer.groups, x)}
        for layer in (depthwise, pointwise, dense)
    }
    compiled = {"native"} if native.available() else set()
    assert applying[depthwise] == {"grouped", "mixture"} | compiled
    assert applying[pointwise] == {"grouped", "mixture", "matmul"}
    assert applying[dense] == {"grouped", "mixture", "matmul", "rows", "stacked"}


@pytest.mark.parametrize("name", [n for n in forms.FORMS if n != "native"])  # native: 3x3
def test_forms_take_each_axis_own_stride_and_padding(name):
    """Called on their own, the forms honour a stride and padding per axis, as F.conv2d does."""
    weight, r = torch.randn(3, 10, 6, 1, 1), torch.rand(4, 3)
    x = torch.randn(4, 6, 7, 9)
    assert forms.applies(name, weight, 1, x)
    out = forms.FORMS[name](x, weight, r, None, (2, 1), (1, 0), 1)
    want = torch.cat(
        [
            F.conv2d(
                x[i : i + 1],
                (r[i, :, None, None, None, None] * weight).sum(0),
                None,
                (2, 1),
                (1, 0),
            )
            for i in range(4)
        ]
    )
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
