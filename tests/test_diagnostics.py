"""Routing diagnostics: the statistics on hand-built cases, the run folder's routing.jsonl and
the figures."""

import json
import math

import pytest
import torch

from condnet.cli import main
from condnet.engine.diagnostics import RoutingMonitor
from condnet.engine.evaluation import evaluate
from condnet.engine.routing_log import read_routing
from condnet.engine.routing_stats import mixed_kernel_norms, routing_figures
from condnet.engine.trainer import build_network, resume_config, train
from condnet.models.condconv import CondConv2d
from tests.helpers import tiny_config


def test_routing_figures_by_hand():
    weights = torch.tensor([[0.01, 0.99, 0.5, 0.5], [0.25, 0.25, 0.25, 0.25]])
    mean, low, high, entropy = routing_figures(weights, 4).tolist()
    assert mean == pytest.approx(weights.mean().item())
    assert low == pytest.approx(1 / 8) and high == pytest.approx(1 / 8)
    share = weights[0] / weights[0].sum()
    first = -(share * share.log()).sum().item() / math.log(4)
    assert entropy == pytest.approx((first + 1.0) / 2, rel=1e-6)  # the uniform row has entropy 1


def test_routing_figures_per_router_when_each_conv_routes():
    # Two routers of two experts side by side: entropy is per router, then averaged.
    weights = torch.tensor([[1.0, 0.0, 0.5, 0.5]])
    assert routing_figures(weights, 2)[3].item() == pytest.approx(0.5, abs=1e-6)


def test_mixed_kernel_norms_by_hand():
    conv = CondConv2d(2, 3, 1, num_experts=2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0] = 3.0  # ||W_1|| = 3
        conv.weight[1, 1, 1] = 4.0  # ||W_2|| = 4, orthogonal to W_1
    r = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    reference = torch.stack([(conv.weight * w[:, None, None, None, None]).sum(0).norm() for w in r])
    expected = reference / math.sqrt((9 + 16) / 2)
    torch.testing.assert_close(mixed_kernel_norms(conv, r), expected)
    assert mixed_kernel_norms(conv, r)[1] == 0  # every routing weight 0: the kernel collapses


def constant_router_model(values: torch.Tensor):
    """A tiny CondConv network whose every router returns `values[label]` for each example."""
    cfg = tiny_config(**{"model.name": "paper-condconv"})
    model = build_network(cfg, 4).eval()
    for router in [m for m in model.modules() if m.__class__.__name__ == "Routing"]:
        with torch.no_grad():
            router.fc.weight.zero_()
            router.fc.bias.copy_(torch.logit(values))
    return model


def test_validation_statistics_by_hand():
    values = torch.tensor([0.01, 0.2, 0.97, 0.5], dtype=torch.float64)
    model = constant_router_model(values.float())
    monitor = RoutingMonitor(model, num_classes=3)
    monitor.start_eval()
    labels = torch.tensor([0, 0, 2, 1, 2])
    with torch.no_grad():
        model(torch.randn(5, 3, 16, 16))
    monitor.observe_eval(labels)
    monitor.observe_eval(torch.tensor([-100, -100, -100, -100, -100]))  # padding rows count nowhere
    record = monitor.epoch_records(epoch=4)[-1]
    assert record["phase"] == "val" and record["epoch"] == 4 and len(record["blocks"]) == 6
    block = record["blocks"][0]
    assert block["mean"] == pytest.approx(values.mean().item(), rel=1e-5)
    assert block["std"] == pytest.approx(values.std(unbiased=False).item(), rel=1e-4)
    assert block["example_std"] == pytest.approx(0, abs=1e-5)  # the same weights for every example
    assert block["low"] == pytest.approx(0.25) and block["high"] == pytest.approx(0.25)
    share = values / values.sum()
    assert block["entropy"] == pytest.approx(
        (-(share * share.log()).sum() / math.log(4)).item(), rel=1e-5
    )
    assert block["expert_means"] == pytest.approx(values.tolist(), rel=1e-5)
    per_class = record["per_class"][0]
    assert per_class[0] == pytest.approx(values.tolist(), rel=1e-5) and per_class[2] == per_class[0]
    assert per_class[1] == pytest.approx(values.tolist(), rel=1e-5)


def test_per_class_means_follow_the_examples():
    cfg = tiny_config(**{"model.name": "paper-condconv"})
    model = build_network(cfg, 2).eval()
    monitor = RoutingMonitor(model, num_classes=2)
    monitor.start_eval()
    images = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        model(images)
    weights = monitor.blocks[0].weights()
    labels = torch.tensor([0, 1, 0, 1, 1, 1])
    monitor.observe_eval(labels)
    record = monitor.epoch_records(0)[-1]
    torch.testing.assert_close(
        torch.tensor(record["per_class"][0][1], dtype=torch.float32), weights[labels == 1].mean(0)
    )


def test_training_samples_every_n_steps(tmp_path):
    cfg = tiny_config(
        **{"model.name": "paper-condconv", "run.routing_stats_every": 2, "train.epochs": 2}
    )
    train(cfg, tmp_path, progress=False)
    records = read_routing(tmp_path)
    steps = 192 // 32
    train_side = [r for r in records if r["phase"] == "train"]
    assert [(r["epoch"], r["step"]) for r in train_side] == [
        (e, s) for e in (1, 2) for s in range(0, steps, 2)
    ]
    assert [r["epoch"] for r in records if r["phase"] == "val"] == [1, 2]
    sample = train_side[0]["blocks"][0]
    assert sample["grad_ratio_routing"] > 0 and sample["grad_ratio_experts"] > 0
    # Initial routing weights are sigmoid(~0) = 0.5 and the experts are independent: the mixed
    # kernel's norm is about one expert's, and the BN running variances are still near 1.
    assert sample["mean"] == pytest.approx(0.5, abs=0.02) and sample["entropy"] > 0.99
    assert (
        0.7 < sample["kernel_norm_mean"] < 1.3
        and 0.5 < sample["bn_var_min"] <= sample["bn_var_max"]
    )


def test_no_routing_log_for_blocks_without_routing_or_when_off(tmp_path):
    train(tiny_config(), tmp_path / "se", progress=False)
    off = tiny_config(
        **{"model.name": "paper-condconv", "run.routing_stats_every": 0, "train.epochs": 1}
    )
    train(off, tmp_path / "off", progress=False)
    assert (
        not (tmp_path / "se" / "routing.jsonl").exists()
        and not (tmp_path / "off" / "routing.jsonl").exists()
    )


def test_resume_rewrites_routing_log_after_the_checkpoint(tmp_path):
    cfg = tiny_config(**{"model.name": "paper-condconv", "run.routing_stats_every": 3})
    train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "part", progress=False, stop_after=2)
    with (tmp_path / "part" / "routing.jsonl").open(
        "a"
    ) as f:  # an epoch logged but not checkpointed
        f.write(json.dumps({"phase": "val", "epoch": 3, "blocks": [], "per_class": []}) + "\n")
    train(resume_config(tmp_path / "part"), tmp_path / "part", resume=True, progress=False)
    full, part = read_routing(tmp_path / "full"), read_routing(tmp_path / "part")
    assert [(r["phase"], r["epoch"]) for r in part] == [(r["phase"], r["epoch"]) for r in full]


def test_evaluate_with_a_monitor_gives_the_same_metrics(tmp_path):
    from condnet.data.datasets import load_splits
    from condnet.engine.loaders import eval_loader, split_data
    from condnet.engine.runtime import make_runtime

    cfg = tiny_config(**{"model.name": "paper-condconv"})
    rt = make_runtime(cfg.run)
    _, val = load_splits(cfg.data, 0)
    loader = eval_loader(cfg, split_data(cfg, rt, val, "val"), rt)
    model = build_network(cfg, 4)
    plain = evaluate(model, loader, rt)
    monitor = RoutingMonitor(model, 4)
    assert evaluate(model, loader, rt, monitor=monitor) == plain
    record = monitor.epoch_records(0)[-1]
    assert len(record["per_class"][0]) == 4 and all(len(row) == 4 for row in record["per_class"][0])


def test_routing_command_writes_figures_and_table(tmp_path, capsys):
    cfg = tiny_config(**{"model.name": "paper-condconv", "train.epochs": 2})
    train(cfg, tmp_path / "run", progress=False)
    assert main(["routing", str(tmp_path / "run"), "--out", str(tmp_path / "figs")]) == 0
    out = capsys.readouterr().out
    assert "| stages.0.0 |" in out and "epoch 2" in out and "before any cap" in out
    for name in ("routing-classes.png", "routing-training.png"):
        assert (tmp_path / "figs" / name).read_bytes()[:4] == b"\x89PNG"


def test_routing_command_on_a_run_without_routing(tmp_path, capsys):
    train(tiny_config(**{"train.epochs": 1}), tmp_path / "run", progress=False)
    assert main(["routing", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no routing.jsonl" in err


@pytest.mark.parametrize("limit", [0.0, 1.0, 3.0])
def test_gradients_are_sampled_before_the_cap_and_the_cap_is_recorded(tmp_path, limit):
    """The sampled router/expert ratio is the backward pass's; the cap factor recorded is
    min(1, limit x expert ratio / router ratio) of that sample (1 everywhere with no cap)."""
    cfg = tiny_config(
        **{
            "model.name": "paper-condconv",
            "train.epochs": 1,
            "train.routing_grad_clip": limit,
            "run.routing_stats_every": 1,
        }
    )
    train(cfg, tmp_path, progress=False)
    samples = [b for r in read_routing(tmp_path) if r["phase"] == "train" for b in r["blocks"]]
    ratios = [b["grad_ratio_routing"] / b["grad_ratio_experts"] for b in samples]
    factors = [b["cap_factor"] for b in samples]
    if limit == 0:
        assert factors == [1.0] * len(samples)
    else:
        assert factors == pytest.approx([min(1.0, limit / r) for r in ratios], rel=1e-4)
    # A small-initialised router's gradient is far above its experts' (relative to the
    # weights): the cap binds, and the sample shows what it removed.
    assert max(ratios) > 3 and (limit == 0 or min(factors) < 1)


def test_note_cap_ignores_steps_that_were_not_sampled():
    model = build_network(tiny_config(**{"model.name": "paper-condconv"}), 4)
    monitor = RoutingMonitor(model, 4, every=2)
    model(torch.randn(4, 3, 16, 16)).sum().backward()
    monitor.train_step(0)
    router = monitor.blocks[1].routers[0]
    monitor.note_cap(1, {router: torch.tensor(0.25)})  # step 1: not sampled, ignored
    monitor.note_cap(0, {router: torch.tensor(0.5)})
    record = monitor.epoch_records(0)[0]
    assert [b["cap_factor"] for b in record["blocks"]][:3] == [1.0, 0.5, 1.0]


def test_validation_statistics_skip_padding_rows_without_indexing():
    """Rows labelled < 0 weigh nothing: the record equals one made from the kept rows alone."""
    from condnet.models.net import init_routers

    model = build_network(tiny_config(**{"model.name": "paper-condconv"}), 4).eval()
    torch.manual_seed(0)
    init_routers(model, "reference")  # routing that differs from example to example
    images = torch.randn(6, 3, 16, 16)
    labels = torch.tensor([2, -100, 0, 2, -100, 3])
    kept = labels >= 0
    padded, alone = RoutingMonitor(model, 4), RoutingMonitor(model, 4)
    for monitor, x, y in ((padded, images, labels), (alone, images[kept], labels[kept])):
        monitor.start_eval()
        with torch.no_grad():
            model(x)
        monitor.observe_eval(y)
    got, want = padded.epoch_records(0)[-1], alone.epoch_records(0)[-1]
    for a, b in zip(got["blocks"], want["blocks"], strict=True):
        for key in ("mean", "std", "example_std", "low", "high", "entropy"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
        assert a["expert_means"] == pytest.approx(b["expert_means"], rel=1e-5)
    torch.testing.assert_close(
        torch.tensor(got["per_class"]), torch.tensor(want["per_class"]), rtol=1e-5, atol=1e-7
    )
    assert got["blocks"][0]["example_std"] > 1e-3  # the rows do differ
