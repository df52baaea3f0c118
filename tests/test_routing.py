"""CondConv routing options: each against a reference, exact through fuse and ONNX, resumable."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import condnet
from condnet.config import TrainConfig
from condnet.data.transform_spec import TransformSpec
from condnet.deploy.bundle import Bundle
from condnet.deploy.export import check_onnx, export_onnx
from condnet.deploy.weights import save_weights
from condnet.engine.checkpoint import load_checkpoint
from condnet.engine.schedule import routing_lr_factor, routing_temperature_at
from condnet.engine.trainer import (
    apply_schedule,
    build_network,
    make_optimizer,
    resume_config,
    train,
)
from condnet.errors import CondnetError
from condnet.models.condconv import Routing
from condnet.models.net import init_routers
from tests.deploy_helpers import SMALL, small_model, trained_like
from tests.helpers import tiny_config

OPTIONS = [("sigmoid", 1.0), ("sigmoid", 7.0), ("softmax", 1.0), ("softmax", 7.0)]
INITS = ["small", "reference"]


def routers(model):
    return [m for m in model.modules() if isinstance(m, Routing)]


def set_temperature(model, value):
    for router in routers(model):
        router.temperature.fill_(value)
    return model


@pytest.mark.parametrize("activation, temperature", OPTIONS)
def test_routing_against_its_formula(activation, temperature):
    router = Routing(6, 4, activation)
    router.temperature.fill_(temperature)
    x = torch.randn(3, 6, 5, 5)
    logits = (x.mean((2, 3)) @ router.fc.weight.T + router.fc.bias) / temperature
    expected = (
        torch.sigmoid(logits)
        if activation == "sigmoid"
        else torch.exp(logits) / torch.exp(logits).sum(1, keepdim=True)
    )
    torch.testing.assert_close(router(x), expected)
    if activation == "softmax":
        torch.testing.assert_close(router(x).sum(1), torch.ones(3))


def test_high_temperature_makes_routing_uniform():
    router = Routing(6, 4, "sigmoid")
    with torch.no_grad():
        router.fc.weight.normal_(0, 3)
    x = torch.randn(8, 6, 5, 5)
    assert (router(x) - 0.5).abs().max() > 0.2
    router.temperature.fill_(1e4)
    assert (router(x) - 0.5).abs().max() < 1e-3


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_block_c_with_each_activation_against_per_example_kernels(activation):
    """Block C end to end: its CondConvs mix each example's kernels from the router's weights."""
    model = condnet.build_model(
        "paper-condconv",
        num_classes=3,
        routing_activation=activation,
        **{"widths": 8, "repeats": 1, "head_channels": 16},
    )
    block = model.stages[1][0].eval()
    set_temperature(block, 3.0)
    x = torch.randn(4, 8, 6, 6)
    pooled = x.mean((2, 3)) @ block.routing.fc.weight.T + block.routing.fc.bias
    r = (torch.sigmoid if activation == "sigmoid" else lambda z: torch.softmax(z, 1))(pooled / 3.0)

    def cond(unit, inp, act=True):
        outs = []
        for xi, ri in zip(inp, r, strict=False):
            w = (ri[:, None, None, None, None] * unit.conv.weight).sum(0)
            outs.append(
                F.conv2d(
                    xi[None], w, None, unit.conv.stride, unit.conv.padding, groups=unit.conv.groups
                )
            )
        return unit.act(unit.bn(torch.cat(outs)))

    with torch.no_grad():
        out = cond(block.project, block.se(cond(block.depthwise, cond(block.expand, x))))
        torch.testing.assert_close(block(x), out + x, rtol=1e-5, atol=1e-5)


def test_unknown_activation_is_one_line_error():
    with pytest.raises(CondnetError, match="routing_activation: expected one of sigmoid, softmax"):
        condnet.build_model("paper-condconv", routing_activation="tanh")


def routed_model(init, **overrides):
    """`small_model("condconv")` with its routers initialised per `init` before the BN
    statistics are drawn (`reference` routes each example differently from the start)."""
    model = condnet.build_model("paper-condconv", num_classes=7, **(SMALL | overrides))
    torch.manual_seed(0)
    init_routers(model, init)
    return trained_like(model)


@pytest.mark.parametrize("activation, temperature", OPTIONS)
@pytest.mark.parametrize("routing", ["block", "conv"])
@pytest.mark.parametrize("init", INITS)
def test_fuse_is_exact_with_each_option(activation, temperature, routing, init):
    model = set_temperature(
        routed_model(init, routing=routing, routing_activation=activation), temperature
    )
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(condnet.fuse(model)(x), model(x), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(
            condnet.prepare_inference(model)(x), model(x), rtol=1e-4, atol=1e-4
        )


@pytest.mark.parametrize("activation, temperature", OPTIONS)
@pytest.mark.parametrize("init", INITS)
def test_onnx_is_exact_with_each_option(activation, temperature, init, tmp_path):
    model = set_temperature(routed_model(init, routing_activation=activation), temperature)
    path = tmp_path / "m.onnx"
    export_onnx(
        Bundle(
            model, [str(i) for i in range(model.num_classes)], TransformSpec(resize=40, crop=32)
        ),
        path,
    )
    differences = check_onnx(path, model, batches=(1, 7, 64))
    assert max(differences.values()) <= 1e-4


def test_temperature_travels_with_the_weights(tmp_path):
    model = set_temperature(small_model("condconv", routing_activation="softmax"), 5.0)
    path = tmp_path / "m.safetensors"
    save_weights(Bundle(model, [str(i) for i in range(model.num_classes)], TransformSpec()), path)
    loaded = condnet.load_pretrained(path)
    assert all(r.temperature.item() == 5.0 for r in routers(loaded))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_routing_schedules():
    cfg = TrainConfig(
        routing_temperature=30.0, routing_anneal_epochs=10.0, routing_warmup_epochs=4.0
    )
    assert routing_temperature_at(0, cfg) == 30.0 and routing_temperature_at(
        5, cfg
    ) == pytest.approx(15.5)
    assert routing_temperature_at(10, cfg) == 1.0 and routing_temperature_at(40, cfg) == 1.0
    assert (
        routing_lr_factor(0, cfg) == 0.0
        and routing_lr_factor(1, cfg) == 0.25
        and routing_lr_factor(9, cfg) == 1.0
    )
    plain = TrainConfig()
    assert routing_temperature_at(0, plain) == 1.0 and routing_lr_factor(0, plain) == 1.0


def test_apply_schedule_sets_rates_and_temperature():
    cfg = tiny_config(
        **{
            "model.name": "paper-condconv",
            "train.routing_lr_scale": 0.5,
            "train.routing_warmup_epochs": 2.0,
            "train.routing_temperature": 9.0,
            "train.routing_anneal_epochs": 2.0,
        }
    )
    model = build_network(cfg, 4)
    optimizer = make_optimizer(model, cfg)
    lr = apply_schedule(model, optimizer, 1.0, cfg.train)
    rates = {bool(g.get("routing")): g["lr"] for g in optimizer.param_groups}
    assert rates[False] == pytest.approx(lr) and rates[True] == pytest.approx(lr * 0.5 * 0.5)
    assert all(r.temperature.item() == pytest.approx(5.0) for r in routers(model))


@pytest.mark.parametrize(
    "per_step, init, experts", [(False, "small", "independent"), (True, "reference", "shared")]
)
def test_resume_is_bit_identical_with_routing_schedules(tmp_path, per_step, init, experts):
    cfg = tiny_config(
        **{
            "model.name": "paper-condconv",
            "train.routing_init": init,
            "train.expert_init": experts,
            "model.overrides.routing_activation": "softmax",
            "train.routing_temperature": 20.0,
            "train.routing_anneal_epochs": 2.0,
            "train.routing_warmup_epochs": 1.5,
            "train.lr_per_step": per_step,
            "train.routing_grad_clip": 2.0,
        }
    )
    train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "part", progress=False, stop_after=1)
    assert (
        load_checkpoint(tmp_path / "part" / "last.pt")["model"]["stages.0.0.routing.temperature"]
        > 1
    )
    train(resume_config(tmp_path / "part"), tmp_path / "part", resume=True, progress=False)
    full, part = (
        load_checkpoint(tmp_path / "full" / "last.pt"),
        load_checkpoint(tmp_path / "part" / "last.pt"),
    )
    assert all(torch.equal(full["model"][k], part["model"][k]) for k in full["model"])
    assert [m["val_loss"] for m in full["metrics"]] == [m["val_loss"] for m in part["metrics"]]


def test_files_without_a_temperature_still_load():
    model = small_model("condconv")
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("temperature")}
    fresh = condnet.build_model("paper-condconv", num_classes=model.num_classes, **SMALL)
    set_temperature(fresh, 4.0)
    fresh.load_state_dict(state)
    assert all(r.temperature.item() == 1.0 for r in routers(fresh))


def test_router_gradients_capped_relative_to_their_experts():
    from condnet.engine.routing_rates import clip_relative
    from condnet.engine.routing_stats import grad_to_weight

    router = [torch.full((4, 3), 0.5), torch.zeros(4)]  # ||w|| = sqrt(3)
    experts = [torch.ones(2, 8)]  # ||w|| = 4
    router[0].grad, router[1].grad = torch.full((4, 3), 2.0), torch.full((4,), 1.0)
    experts[0].grad = torch.full((2, 8), 0.1)  # ratio 0.4 / 4 = 0.1
    clip_relative(router, experts, limit=2.0)
    assert grad_to_weight(router).item() == pytest.approx(0.2)
    assert router[1].grad[0].item() == pytest.approx(router[0].grad[0, 0].item() / 2)  # one factor
    before = [g.grad.clone() for g in router]
    clip_relative(router, experts, limit=100.0)  # already below: unchanged
    assert all(torch.equal(p.grad, b) for p, b in zip(router, before, strict=True))


def test_auto_rate_matches_each_router_to_its_experts():
    from condnet.engine.routing_rates import calibrate, needs_calibration
    from condnet.engine.routing_stats import grad_to_weight

    router = [nn.Parameter(torch.full((4, 3), 0.5)), nn.Parameter(torch.zeros(4))]
    experts = [nn.Parameter(torch.ones(2, 8))]
    router[0].grad, router[1].grad = torch.full((4, 3), 2.0), torch.full((4,), 1.0)
    experts[0].grad = torch.full((2, 8), 0.1)  # ratio 0.4 / 4 = 0.1
    groups = [
        {"params": experts, "lr": 0.2, "lr_scale": 1.0},
        {"params": router, "lr": 0.2, "lr_scale": 0.5, "routing": True},
    ]
    optimizer = torch.optim.SGD(groups, lr=0.2)
    assert needs_calibration(optimizer)
    expected = 0.1 / (52**0.5 / 3**0.5)  # the router: ||grad|| = sqrt(52), ||w|| = sqrt(3)
    assert grad_to_weight(router).item() == pytest.approx(52**0.5 / 3**0.5)
    assert calibrate([(router, experts)], optimizer) == [pytest.approx(expected)]
    conv, routing = optimizer.param_groups
    assert (routing["lr"], routing["lr_scale"]) == (
        pytest.approx(0.2 * expected),
        pytest.approx(0.5 * expected),
    )
    assert routing["calibration"] == pytest.approx(expected) and conv["lr"] == 0.2
    assert not needs_calibration(optimizer)  # once only: kept in the group (and the checkpoint)


def test_auto_rate_is_measured_once_and_kept_in_the_checkpoint(tmp_path):
    cfg = tiny_config(
        **{"model.name": "paper-condconv", "train.epochs": 1, "train.routing_lr_auto": True}
    )
    train(cfg, tmp_path / "run", progress=False)
    groups = load_checkpoint(tmp_path / "run" / "last.pt")["optimizer"]["param_groups"]
    routers = [g for g in groups if g.get("routing")]
    assert routers and all(g["calibrated"] and 0 < g["calibration"] < 1 for g in routers)
    scale = cfg.train.routing_lr_scale  # the configured multiplier, times the measured one
    assert all(g["lr_scale"] == pytest.approx(scale * g["calibration"]) for g in routers)


def test_grad_clip_holds_the_routers_back(tmp_path):
    cfg = tiny_config(
        **{"model.name": "paper-condconv", "train.epochs": 1, "train.routing_grad_clip": 0.0}
    )
    clipped = tiny_config(
        **{"model.name": "paper-condconv", "train.epochs": 1, "train.routing_grad_clip": 1e-3}
    )
    train(cfg, tmp_path / "plain", progress=False, stop_after=1)
    train(clipped, tmp_path / "clipped", progress=False, stop_after=1)
    plain, capped = (
        load_checkpoint(tmp_path / n / "last.pt")["model"] for n in ("plain", "clipped")
    )
    torch.manual_seed(cfg.run.seed)  # the trainer's initial weights
    start = build_network(cfg, 4).state_dict()
    router_keys = [k for k in plain if ".routing.fc." in k]
    moved = lambda state, k: (state[k] - start[k]).norm().item()  # noqa: E731
    assert all(moved(capped, k) < 0.1 * moved(plain, k) for k in router_keys)


def test_reference_router_init_against_its_formula():
    """TF's EfficientNet-CondConv and timm: uniform in +-1/sqrt(fan_in + fan_out), bias 0."""
    model = condnet.build_model("paper-condconv", num_classes=10)
    torch.manual_seed(1)
    init_routers(model, "reference")
    for router in routers(model):
        bound = 1 / (router.fc.in_features + router.fc.out_features) ** 0.5
        weight = router.fc.weight
        assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound
        assert weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.2)  # uniform's sd
        assert torch.equal(router.fc.bias, torch.zeros_like(router.fc.bias))
    init_routers(model, "small")
    every = torch.cat([r.fc.weight.flatten() for r in routers(model)])
    assert every.std().item() == pytest.approx(0.01, rel=0.1)


def test_the_trainer_initialises_routers_as_configured():
    """`train.routing_init` redraws the routers only: every other weight is the builder's."""
    small = tiny_config(**{"model.name": "paper-condconv"})
    reference = tiny_config(**{"model.name": "paper-condconv", "train.routing_init": "reference"})
    torch.manual_seed(0)
    a = build_network(small, 4).state_dict()
    torch.manual_seed(0)
    b = build_network(reference, 4).state_dict()
    router_keys = {k for k in a if ".routing.fc.weight" in k}
    assert router_keys and all(torch.equal(a[k], b[k]) for k in a if k not in router_keys)
    for key in router_keys:
        fan = sum(a[key].shape)  # in_features + num_experts
        assert a[key].std() < 0.02 and b[key].abs().max() <= 1 / fan**0.5
        assert b[key].std() > 5 * a[key].std()


def test_unknown_router_init_is_refused():
    with pytest.raises(CondnetError, match="train.routing_init"):
        tiny_config(**{"train.routing_init": "large"})


def test_temperature_anneals_every_step_when_the_rate_is_set_per_epoch(tmp_path):
    """Dynamic Convolution anneals per step; the paper's rate stays constant within an epoch."""
    cfg = tiny_config(
        **{
            "model.name": "paper-condconv",
            "train.epochs": 1,
            "train.lr_per_step": False,
            "train.routing_temperature": 30.0,
            "train.routing_anneal_epochs": 2.0,
        }
    )
    train(cfg, tmp_path, progress=False)
    state = load_checkpoint(tmp_path / "last.pt")
    steps = 192 // 32
    last_step = (steps - 1) / steps  # the fractional epoch of the epoch's last step
    assert state["model"]["stages.0.0.routing.temperature"].item() == pytest.approx(
        30 + (1 - 30) * last_step / 2
    )
    assert state["metrics"][0]["lr"] == pytest.approx(cfg.train.lr_start)  # once, per epoch


def test_shared_experts_start_as_one_plain_conv_scaled_by_the_routing_sum():
    """`expert_init: shared`: every expert is one He-normal draw, so each example's mixed
    kernel is that conv times the sum of its routing weights."""
    from condnet.models.condconv import CondConv2d
    from condnet.models.net import init_experts

    layer = CondConv2d(6, 10, 3, num_experts=4)
    torch.manual_seed(0)
    init_experts(layer, "shared")
    assert all(torch.equal(layer.weight[m], layer.weight[0]) for m in range(4))
    assert layer.weight[0].std().item() == pytest.approx((2 / (10 * 9)) ** 0.5, rel=0.15)
    x, r = torch.randn(3, 6, 7, 7), torch.rand(3, 4)
    expected = F.conv2d(x, layer.weight[0], padding=1) * r.sum(1)[:, None, None, None]
    torch.testing.assert_close(layer(x, r), expected, rtol=1e-5, atol=1e-5)
    init_experts(layer, "independent")
    assert not torch.equal(layer.weight[0], layer.weight[1])


def test_the_trainer_shares_experts_as_configured():
    cfg = tiny_config(**{"model.name": "paper-condconv", "train.expert_init": "shared"})
    torch.manual_seed(0)
    shared = build_network(cfg, 4).state_dict()
    torch.manual_seed(0)
    plain = build_network(tiny_config(**{"model.name": "paper-condconv"}), 4).state_dict()
    experts = {k for k, v in shared.items() if k.endswith("conv.weight") and v.dim() == 5}
    assert experts and all(
        torch.equal(shared[k][1:], shared[k][:1].expand_as(shared[k][1:])) for k in experts
    )
    assert all(torch.equal(shared[k], plain[k]) for k in shared if k not in experts)
