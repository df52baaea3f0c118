"""What runs only on a GPU: bf16 autocast with fp32 batch norm, the fused SGD step, compiled
training without recompiles, and the tensor pipeline held and transformed on the device.

Skipped without a CUDA device. The tensor pipeline's crop geometry on the device is checked by
`test_tensor_loader.py` (its CUDA case), against the same references as on the CPU.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from condnet.data.cache import load_cached
from condnet.data.tensor_loader import DeviceSplit, TensorLoader
from condnet.engine.checkpoint import load_checkpoint
from condnet.engine.metrics import read_metrics
from condnet.engine.runtime import make_runtime, place_model
from condnet.engine.trainer import (
    apply_schedule,
    build_network,
    make_optimizer,
    resume_config,
    train,
)
from tests.helpers import array_split, load_benchmark, paper_data, tensor_config, tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

ON_CUDA = {"run.device": "cuda", "run.deterministic": False}


@pytest.fixture(autouse=True)
def restore_backend_flags():
    """`make_runtime` sets global flags (TF32, cuDNN's choice of algorithms, deterministic
    algorithms); each test starts from deterministic cuDNN kernels and leaves the flags as it
    found them."""
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.backends.cuda.matmul.allow_tf32,
    )
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    yield
    torch.use_deterministic_algorithms(saved[0])
    (
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.backends.cuda.matmul.allow_tf32,
    ) = saved[1:]


def test_bf16_autocast_keeps_batch_norm_and_the_weights_in_fp32():
    cfg = tiny_config(**ON_CUDA, **{"run.amp": True})
    rt = make_runtime(cfg.run)
    assert rt.amp and rt.device.type == "cuda" and rt.record()["precision"] == "bf16 autocast"
    torch.manual_seed(0)
    model = place_model(build_network(cfg, 4), rt).train()
    optimizer = make_optimizer(model, cfg, fused=True)
    bn_inputs = []
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.register_forward_hook(lambda module, args, out: bn_inputs.append(args[0].dtype))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randn(32, 3, 16, 16, device="cuda")
    labels = torch.randint(0, 4, (32,), device="cuda")
    with rt.autocast():
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
    # The convolutions and the classifier ran in bf16; the loss is computed in fp32.
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert bn_inputs and set(bn_inputs) == {torch.bfloat16}  # BN sees bf16 activations ...
    loss.backward()
    optimizer.step()
    # ... but its affine terms and running statistics, like every weight, stay fp32 and move.
    for name, value in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        assert value.dtype == torch.float32, name
        assert torch.isfinite(value).all() and not torch.equal(value, before[name]), name
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())
    for _ in range(30):  # BN's running statistics settle on these images before eval mode
        with rt.autocast():
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # Within bf16's precision of the fp32 network's output on the same weights.
    with torch.no_grad():
        model.eval()
        with rt.autocast():
            low = model(images).float()
        exact = model(images)
    assert (low - exact).abs().max() < 0.05 * exact.abs().max() + 1e-3


def test_batch_norm_statistics_of_bf16_activations_accumulate_in_fp32():
    """Mean 10, 65,536 values a channel: summed in bf16 (8 significant bits) the statistics
    would be off by far more than fp32 accumulation allows."""
    bn = nn.BatchNorm2d(8, momentum=1.0).cuda()  # the running statistics become the batch's
    x = (10 + torch.randn(64, 8, 32, 32, device="cuda")).bfloat16()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = bn(x)
    exact = x.double()
    mean, var = exact.mean((0, 2, 3)), exact.var((0, 2, 3), unbiased=True)
    assert bn.running_mean.dtype == bn.running_var.dtype == torch.float32
    torch.testing.assert_close(bn.running_mean.double(), mean, rtol=1e-5, atol=0)
    torch.testing.assert_close(bn.running_var.double(), var, rtol=1e-3, atol=0)
    normalised = (exact - mean[:, None, None]) / torch.sqrt(var[:, None, None] + bn.eps)
    assert (out.double() - normalised).abs().max() < 0.05  # bf16 output, fp32 statistics


def test_fused_sgd_on_the_gpu_matches_the_per_parameter_loop():
    """Every group (the routers' own rate included), momentum, Nesterov and weight decay."""
    cfg = tiny_config(**ON_CUDA, **{"model.name": "paper-condconv", "train.weight_decay": 1e-3})
    results = []
    for fused in (False, True):
        torch.manual_seed(0)
        model = build_network(cfg, 4).cuda()
        start = torch.cat([p.detach().flatten() for p in model.parameters()])
        optimizer = make_optimizer(model, cfg, fused=fused)
        assert bool(optimizer.defaults["fused"]) is fused and len(optimizer.param_groups) > 1
        assert optimizer.defaults["foreach"] is (None if fused else False)  # not foreach
        apply_schedule(model, optimizer, 1.5, cfg.train)
        for step in range(3):
            generator = torch.Generator("cuda").manual_seed(step)
            images = torch.randn(8, 3, 16, 16, device="cuda", generator=generator)
            loss = model(images).logsumexp(1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        assert (results[-1] - start).abs().max() > 1e-3  # the steps moved the weights
    torch.testing.assert_close(results[1], results[0], rtol=1e-5, atol=1e-6)


COMPILED_RUNS = {
    "paper-standard": {},
    # CondConv with everything `train()` adds to it: routers, the cap on their gradients, and
    # the routing monitor sampling every 2nd step and observing every evaluation batch.
    "paper-condconv": {"train.routing_grad_clip": 1.0, "run.routing_stats_every": 2},
}


@pytest.mark.parametrize("name", COMPILED_RUNS)
def test_compiled_training_on_the_device_never_recompiles(tmp_path, name):
    """The real run on a GPU: tensor pipeline on the device, bf16 autocast, channels_last,
    Inductor; the graphs of the first epoch serve the whole run and its resume."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    cfg = tensor_config(
        tmp_path,
        **ON_CUDA,
        **{"run.amp": True, "run.compile": True, "run.channels_last": True},
        **{"data.synthetic_images": 200, "train.epochs": 3, "train.eval_batch_size": 32},
        **{"model.name": name, **COMPILED_RUNS[name]},
    )
    out = tmp_path / "run"
    train(cfg, out, progress=False, stop_after=1)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 2  # at least one training and one evaluation graph
    if name == "paper-standard":
        assert graphs == 2  # 6 batches of 32; 50 val images as 2 x 32
    train(resume_config(out), out, resume=True, progress=False, stop_after=2)
    train(resume_config(out), out, resume=True, progress=False)
    assert counters["stats"]["unique_graphs"] == graphs
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    name = torch.cuda.get_device_name(0)
    assert all(r["precision"] == "bf16 autocast" and r["device"] == name for r in records)
    assert all(math.isfinite(r["train_loss"]) and r["train_images"] == 192 for r in records)
    assert all(r["val_images"] == 50 for r in records)
    state = load_checkpoint(out / "last.pt")
    assert all(group["fused"] for group in state["optimizer"]["param_groups"])  # CUDA: fused
    assert all(v.dtype in (torch.float32, torch.int64) for v in state["model"].values())


def test_tensor_pipeline_batches_stay_on_the_device_without_a_host_sync(tmp_path):
    """An epoch's batches are made on the device with no synchronisation with the host, and
    the evaluation batches equal the CPU's."""
    cfg = paper_data()
    cached = load_cached(array_split(count=40), tmp_path / "cache", 64, 56)
    cpu = DeviceSplit.from_cache(cached, torch.device("cpu"))
    gpu = DeviceSplit.from_cache(cached, torch.device("cuda"))
    assert gpu.images.device.type == "cuda" and gpu.labels.device.type == "cuda"
    # Loaders and generators are made first: copying the mean and std to the device syncs.
    evaluation = TensorLoader(gpu, 16, cfg, channels_last=True)
    training = TensorLoader(
        gpu, 16, cfg, torch.Generator("cuda").manual_seed(0), channels_last=True
    )
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        eval_batches, train_batches = list(evaluation), list(training)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(eval_batches) == 3 and len(train_batches) == 2  # 40 images: padded, dropped
    for images, labels, _ in eval_batches + train_batches:
        assert images.device.type == labels.device.type == "cuda"
        assert images.shape[1:] == (3, 56, 56)
        assert images.is_contiguous(memory_format=torch.channels_last)
    for (got, got_labels, _), (want, want_labels, _) in zip(
        eval_batches, TensorLoader(cpu, 16, cfg), strict=True
    ):
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=1e-6)
        assert torch.equal(got_labels.cpu(), want_labels)


@pytest.mark.parametrize("name", ["paper-standard", "paper-condconv"])
def test_a_training_epoch_and_an_evaluation_each_wait_for_the_device_once(tmp_path, name):
    """The epoch's totals and the evaluation's sums are the only copies to the host: the
    routing monitor and the router cap run on the device."""
    from condnet.engine.evaluation import evaluate
    from condnet.engine.loaders import eval_loader, train_loader
    from condnet.engine.runtime import seed_epoch
    from condnet.engine.trainer import start_run, train_one_epoch

    count_syncs = load_benchmark("gpu_smoke").count_syncs  # what the smoke check reports

    cfg = tiny_config(
        **ON_CUDA,
        **{"model.name": name, "train.routing_grad_clip": 1.0, "run.routing_stats_every": 2},
    )
    rt = make_runtime(cfg.run)
    data = DeviceSplit.from_cache(
        load_cached(array_split(count=96), tmp_path / "cache", 20, 16), rt.device
    )
    ctx = start_run(cfg, rt, 4)
    assert (ctx.monitor is not None) is (name == "paper-condconv")
    loader = train_loader(cfg, data, rt, 0, seed_epoch(0, 0, 0))
    validation = eval_loader(cfg, data, rt)
    (loss, seen, _), syncs = count_syncs(lambda: train_one_epoch(ctx, loader, 0))
    assert math.isfinite(loss) and seen == 96 and syncs == 1
    result, syncs = count_syncs(lambda: evaluate(ctx.net, validation, rt, monitor=ctx.monitor))
    assert result["count"] == 96 and syncs == 1
