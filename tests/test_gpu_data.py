"""The tensor pipeline (data.pipeline=tensor) on the CPU: cache, batch transforms, loader, loop."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image

from condnet.config import load_config
from condnet.data import cache as cache_module
from condnet.data.batch_transforms import center_crops, resized_crops, sample_boxes
from condnet.data.cache import cache_folder, load_cached, long_side
from condnet.data.datasets import load_splits
from condnet.data.sources import Split
from condnet.data.tensor_loader import DeviceSplit, TensorLoader
from condnet.data.transforms import eval_transform, train_transform
from condnet.engine.checkpoint import load_checkpoint
from condnet.engine.distributed import Dist
from condnet.engine.loaders import train_loader
from condnet.engine.runtime import Runtime, seed_epoch
from condnet.engine.schedule import lr_at
from condnet.engine.evaluation import evaluate
from condnet.engine.trainer import (
    build_network,
    make_optimizer,
    resume_config,
    set_lr,
    train,
)
from condnet.errors import CondnetError
from tests.helpers import tiny_config, write_imagefolder

ROOT = Path(__file__).resolve().parents[1]
CPU = Runtime(torch.device("cpu"), Dist(), amp=False, channels_last=False)
PAPER = tiny_config(**{"data.resize": 64, "data.crop": 56, "data.scale": [0.08, 1.0]}).data


def array_split(count: int = 40, size: int = 64, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    return Split(images, np.arange(count) % 4, [f"c{i}" for i in range(4)])


def device_split(split: Split, folder: Path, size: int = 64, crop: int = 56) -> DeviceSplit:
    return DeviceSplit.from_cache(load_cached(split, folder, size, crop), torch.device("cpu"))


# --- the cache --------------------------------------------------------------------------------


def test_cache_of_64px_arrays_is_an_exact_copy(tmp_path):
    split = array_split()
    cached = load_cached(split, tmp_path / "c", 64, 56)
    assert cached.images.shape == (40, 64, 64, 3) and isinstance(cached.images, np.memmap)
    assert np.array_equal(cached.images, split.images) and np.array_equal(
        cached.labels, split.labels
    )
    assert (cached.sizes == 64).all()
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["count"] == 40 and manifest["canvas"] == [64, 64]


def test_cache_is_reused_and_rebuilt_when_the_source_changes(tmp_path, monkeypatch):
    root = write_imagefolder(tmp_path / "data", per_class=2)
    train, _ = load_splits(
        tiny_config(**{"data.source": "imagefolder", "data.root": str(root)}).data, 0
    )
    builds = []
    real_build = cache_module._build
    monkeypatch.setattr(cache_module, "_build", lambda *a: builds.append(1) or real_build(*a))
    first = load_cached(train, tmp_path / "c", 20, 16)
    again = load_cached(train, tmp_path / "c", 20, 16)
    assert len(builds) == 1 and np.array_equal(first.images, again.images)
    Image.new("RGB", (30, 20), "blue").save(train.images[0])  # same path, new content
    changed = load_cached(train, tmp_path / "c", 20, 16)
    assert len(builds) == 2 and not np.array_equal(first.images[0], changed.images[0])
    arrays = array_split()
    load_cached(arrays, tmp_path / "a", 64, 56)
    arrays.images[3, 0, 0, 0] ^= 1
    load_cached(arrays, tmp_path / "a", 64, 56)
    assert len(builds) == 4
    assert not list((tmp_path / "c").glob("*.tmp")) and not list((tmp_path / "a").glob("*.tmp"))


def test_cache_decoded_by_worker_processes_is_the_same(tmp_path):
    root = write_imagefolder(tmp_path / "data", per_class=2)
    data_cfg = tiny_config(**{"data.source": "imagefolder", "data.root": str(root)}).data
    train, _ = load_splits(data_cfg, 0)
    serial = load_cached(train, tmp_path / "serial", 20, 16)
    pooled = load_cached(train, tmp_path / "pooled", 20, 16, workers=1)
    assert np.array_equal(serial.images, pooled.images)
    assert np.array_equal(serial.sizes, pooled.sizes)


def test_cache_folder_is_shared_by_models_and_separate_per_split(tmp_path):
    cfg = tiny_config(**{"data.cache": str(tmp_path)})
    other = tiny_config(**{"data.cache": str(tmp_path), "model.name": "paper-se"})
    assert cache_folder(cfg.data, "train", 0) == cache_folder(other.data, "train", 0)
    assert cache_folder(cfg.data, "train", 0) != cache_folder(cfg.data, "val", 0)
    assert cache_folder(cfg.data, "train", 0).parent == tmp_path
    assert cache_folder(tiny_config().data, "val", 0).parent.name == "condnet"


def test_non_square_images_are_kept_whole_up_to_3_to_2(tmp_path):
    paths = []
    for i, (h, w) in enumerate([(64, 85), (96, 64), (64, 200)]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((h, w, 3), 10 * i, np.uint8)).save(paths[-1])
    cached = load_cached(Split(paths, np.zeros(3, np.int64), ["a"]), tmp_path / "c", 64, 56)
    assert long_side(64, 56) == 96 and cached.images.shape == (3, 96, 96, 3)
    assert cached.sizes.tolist() == [[64, 85], [96, 64], [64, 96]]


def test_cache_skips_unreadable_files_with_one_line_each(tmp_path, capfd):
    root = write_imagefolder(tmp_path / "data", per_class=2)
    (root / "train" / "cat" / "broken.png").write_bytes(b"not an image")
    train, _ = load_splits(
        tiny_config(**{"data.source": "imagefolder", "data.root": str(root)}).data, 0
    )
    cached = load_cached(train, tmp_path / "c", 20, 16)
    err = capfd.readouterr().err.splitlines()
    assert len(cached) == len(train) - 1 and len(cached.skipped) == 1
    assert sum("broken.png" in line for line in err) == 1
    with pytest.raises(CondnetError, match=r"broken.png.*data.on_bad_image=error"):
        load_cached(train, tmp_path / "e", 20, 16, on_bad_image="error")
    assert not list((tmp_path / "e").glob("*.npy*"))


# --- the batch transforms ---------------------------------------------------------------------


def test_crop_boxes_follow_random_resized_crop():
    sizes = torch.tensor([[64, 64]] * 4000 + [[64, 85]] * 4000)
    boxes = sample_boxes(sizes, PAPER.scale, PAPER.ratio, torch.Generator().manual_seed(0))
    top, left, h, w = boxes.T
    height, width = sizes.T.double()
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    # Within the ranges before each side was rounded to whole pixels (by at most half a pixel).
    assert ((w + 0.5) * (h + 0.5) >= 0.08 * height * width).all() and (
        w * h <= height * width
    ).all()
    assert ((w + 0.5) / (h - 0.5) >= 3 / 4).all() and ((w - 0.5) / (h + 0.5) <= 4 / 3).all()
    area = h * w / (height * width)
    # Against torchvision's own sampler on the same image sizes: same distribution.
    torch.manual_seed(0)
    reference = torch.tensor(
        [
            T.RandomResizedCrop.get_params(torch.empty(3, *s), PAPER.scale, PAPER.ratio)
            for s in sizes[::8].tolist()
        ],
        dtype=torch.float64,
    )
    ref_area = reference[:, 2] * reference[:, 3] / (height[::8] * width[::8])
    assert abs(area.mean() - ref_area.mean()) < 0.03 and abs(area.std() - ref_area.std()) < 0.03
    centre = (left + w / 2) / width
    assert abs(centre.mean() - 0.5) < 0.01 and centre.std() > 0.1


def test_crop_box_fallback_is_torchvision_s_central_crop():
    sizes = torch.tensor([[10, 100], [100, 10], [50, 50]])
    boxes = sample_boxes(sizes, [0.9, 1.0], [3 / 4, 4 / 3], torch.Generator().manual_seed(0))
    assert boxes.tolist() == [[0, 43, 10, 13], [43, 0, 13, 10], boxes[2].tolist()]
    generator = torch.Generator().manual_seed(0)
    assert sample_boxes(sizes[2:], [2.0, 2.0], [1.0, 1.0], generator).tolist() == [[0, 0, 50, 50]]


def test_resized_crop_is_interpolate_and_flip_mirrors():
    images = torch.rand(2, 3, 40, 30) * 255
    whole = torch.tensor([[0.0, 0, 40, 30]] * 2, dtype=torch.float64)
    flip = torch.tensor([False, True])
    out = resized_crops(images, whole, 24, flip)
    expected = F.interpolate(images, size=(24, 24), mode="bilinear", align_corners=False)
    assert torch.allclose(out[0], expected[0], atol=1e-3)
    assert torch.allclose(out[1], expected[1].flip(-1), atol=1e-3)
    box = torch.tensor([[5.0, 7, 20, 16]], dtype=torch.float64)
    inner = resized_crops(images[:1], box, 8, flip[:1])  # a 2x down-sampling: exact pixel pairs
    crop = images[:1, :, 5:25, 7:23]
    assert torch.allclose(inner, F.interpolate(crop, size=(8, 8), mode="bilinear"), atol=1e-3)


def test_flip_rate_is_hflip():
    ramp = (
        torch.arange(16, dtype=torch.uint8).repeat(16, 1)[None, :, :, None].expand(2000, 16, 16, 3)
    )
    split = DeviceSplit(
        ramp.contiguous(), torch.full((2000, 2), 16), torch.zeros(2000, dtype=torch.long)
    )
    cfg = tiny_config(
        **{
            "data.resize": 16,
            "data.crop": 16,
            "data.scale": [1.0, 1.0],
            "data.ratio": [1.0, 1.0],
            "data.mean": [0, 0, 0],
            "data.std": [1, 1, 1],
        }
    ).data
    images, _, _ = next(iter(TensorLoader(split, 2000, cfg, torch.Generator().manual_seed(1))))
    flipped = images[:, 0, 0, 0] > images[:, 0, 0, -1]
    ramp_row = torch.arange(16.0).expand(int((~flipped).sum()), 16)
    assert torch.allclose(images[~flipped, 0, 0] * 255, ramp_row, atol=1e-3)
    assert abs(flipped.float().mean().item() - 0.5) < 0.04


def test_normalised_values_match_the_torchvision_path(tmp_path):
    split = array_split(count=200)
    tensor_images, _, _ = next(
        iter(
            TensorLoader(
                device_split(split, tmp_path), 200, PAPER, torch.Generator().manual_seed(0)
            )
        )
    )
    transform = train_transform(56, scale=PAPER.scale, ratio=PAPER.ratio, hflip=PAPER.hflip, mean=PAPER.mean, std=PAPER.std)
    torch.manual_seed(0)
    vision = torch.stack([transform(torch.from_numpy(im).permute(2, 0, 1)) for im in split.images])
    assert tensor_images.shape == vision.shape == (200, 3, 56, 56)
    mean, std = torch.tensor(PAPER.mean)[:, None], torch.tensor(PAPER.std)[:, None]
    low, high = (-mean / std).squeeze(1), ((1 - mean) / std).squeeze(1)
    for images in (tensor_images, vision):
        flat = images.transpose(0, 1).reshape(3, -1)
        assert (flat.min(1).values >= low - 1e-5).all() and (
            flat.max(1).values <= high + 1e-5
        ).all()
    per_channel = lambda x: x.transpose(0, 1).reshape(3, -1)  # noqa: E731
    assert torch.allclose(
        per_channel(tensor_images).mean(1), per_channel(vision).mean(1), atol=0.02
    )
    assert torch.allclose(per_channel(tensor_images).std(1), per_channel(vision).std(1), atol=0.05)


@pytest.mark.parametrize("source", ["arrays", "files"])
def test_eval_batches_equal_the_torchvision_eval_transform(tmp_path, source):
    if source == "arrays":
        split, resize, crop = array_split(count=10), 64, 56
    else:  # non-square files, resized by the cache as the eval transform resizes them
        root = write_imagefolder(tmp_path / "data", per_class=3)
        long = np.random.default_rng(0).integers(0, 256, (20, 80, 3), dtype=np.uint8)
        Image.fromarray(long).save(root / "val" / "cat" / "long.png")  # beyond 3:2, cut to 48
        split, resize, crop = (
            load_splits(
                tiny_config(**{"data.source": "imagefolder", "data.root": str(root)}).data, 0
            )[1],
            32,
            28,
        )
    cfg = tiny_config(**{"data.resize": resize, "data.crop": crop}).data
    loader = TensorLoader(device_split(split, tmp_path / "c", resize, crop), 4, cfg)
    images = torch.cat([batch for batch, _, _ in loader])[: len(split)]
    transform = eval_transform(resize, crop, cfg.mean, cfg.std)
    if source == "arrays":
        vision = [transform(torch.from_numpy(im).permute(2, 0, 1)) for im in split.images]
    else:
        vision = [transform(Image.open(path).convert("RGB")) for path in split.images]
    assert torch.equal(images, torch.stack(vision))


def test_center_crop_offsets_round_half_to_even():
    images = torch.arange(5 * 9, dtype=torch.uint8).view(1, 5, 9, 1)
    crop = center_crops(images, torch.tensor([0]), torch.tensor([[5, 9]]), 2)
    assert crop[0, :, :, 0].tolist() == [[22, 23], [31, 32]]  # offsets round(1.5)=2, round(3.5)=4


# --- the loader and the training loop ----------------------------------------------------------


def test_padded_evaluation_gives_exactly_the_unpadded_metrics(tmp_path):
    cfg = tiny_config(**{"data.resize": 64, "data.crop": 56})
    split = device_split(array_split(count=50), tmp_path)
    model = build_network(cfg, 4)
    padded = TensorLoader(split, 16, cfg.data)
    batches = list(padded)
    assert len(padded) == 4 and [b[0].shape[0] for b in batches] == [16] * 4
    assert (batches[-1][1] == -100).sum() == 14
    result = evaluate(model, padded, CPU)
    whole = evaluate(model, TensorLoader(split, 50, cfg.data), CPU)
    assert result["count"] == whole["count"] == 50
    assert (result["top1"], result["top5"]) == (whole["top1"], whole["top5"])
    assert result["loss"] == pytest.approx(whole["loss"], rel=1e-6)


def test_training_batches_have_one_shape_and_channels_last(tmp_path):
    cfg = tiny_config(**{"data.resize": 64, "data.crop": 56, "train.batch_size": 16})
    rt = Runtime(torch.device("cpu"), Dist(), amp=False, channels_last=True)
    split = device_split(array_split(count=40), tmp_path)
    loader = train_loader(cfg, split, rt, 0, seed_epoch(0, 0, 0))
    batches = list(loader)
    assert len(loader) == len(batches) == 2
    for images, labels, skipped in batches:
        assert images.shape == (16, 3, 56, 56) and labels.shape == (16,) and skipped == []
        assert images.is_contiguous(memory_format=torch.channels_last)
    again = list(train_loader(cfg, split, rt, 0, seed_epoch(0, 0, 0)))  # an epoch replays exactly
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))


def test_pipeline_is_validated():
    with pytest.raises(CondnetError, match="data.pipeline: expected one of torchvision, tensor"):
        load_config(None, {"data.pipeline": "dali"})
    with pytest.raises(CondnetError, match="run.compile_mode: expected one of default"):
        load_config(None, {"run.compile_mode": "fast"})
    assert load_config(None).data.pipeline == "torchvision"


def test_fused_sgd_matches_the_loop():
    cfg = tiny_config()
    results = []
    for fused in (False, True):
        torch.manual_seed(0)
        model = build_network(cfg, 4)
        optimizer = make_optimizer(model, cfg, fused=fused)
        for _ in range(3):
            loss = model(torch.randn(8, 3, 16, 16)).logsumexp(1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(results[0], results[1], atol=1e-6)


def tensor_config(tmp_path: Path, **overrides):
    return tiny_config(
        **{"data.pipeline": "tensor", "data.cache": str(tmp_path / "cache"), **overrides}
    )


def test_tensor_pipeline_learns_a_small_real_subset(tmp_path):
    cfg = tensor_config(
        tmp_path,
        **{
            "data.source": "fashion-mnist",
            "data.train_subset": 1024,
            "data.val_subset": 500,
            "data.resize": 28,
            "data.crop": 24,
            "data.scale": [0.6, 1.0],
            "train.epochs": 3,
            "train.lr_peak": 0.2,
        },
    )
    metrics = train(cfg, tmp_path / "run", progress=False)
    assert metrics[-1]["val_top1"] > 50  # chance is 10 %
    assert metrics[-1]["skipped_images"] == 0


def test_tensor_pipeline_resume_is_bit_identical(tmp_path):
    cfg = tensor_config(tmp_path)
    train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "part", progress=False, stop_after=1)
    train(resume_config(tmp_path / "part"), tmp_path / "part", resume=True, progress=False)
    full = load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    part = load_checkpoint(tmp_path / "part" / "last.pt")["model"]
    assert all(torch.equal(full[k], part[k]) for k in full)


def test_unreadable_files_are_counted_each_epoch(tmp_path, capfd):
    root = write_imagefolder(tmp_path / "data", per_class=6)
    (root / "train" / "dog" / "empty.jpg").write_bytes(b"")
    cfg = tensor_config(
        tmp_path,
        **{
            "data.source": "imagefolder",
            "data.root": str(root),
            "data.resize": 20,
            "train.epochs": 2,
            "train.batch_size": 8,
        },
    )
    metrics = train(cfg, tmp_path / "run", progress=False)
    assert [m["skipped_images"] for m in metrics] == [1, 1]
    assert sum("empty.jpg" in line for line in capfd.readouterr().err.splitlines()) == 1


def test_two_process_ddp_step_equals_one_process_on_the_global_batch(tmp_path):
    """Each rank trains on its 32 of a global batch of 64; one process given the same 64 images
    (with the same augmentation) and the same per-rank BatchNorm statistics takes the same step."""
    cfg = tensor_config(
        tmp_path,
        **{
            "data.synthetic_images": 64,
            "train.batch_size": 64,
            "train.epochs": 1,
            "train.warmup_epochs": 0,
            "train.lr_peak": 0.5,
        },
    )
    cfg.save(tmp_path / "cfg.yaml")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29573",
        "-m",
        "condnet.cli",
        "train",
        "--config",
        str(tmp_path / "cfg.yaml"),
        "--out",
        str(tmp_path / "run"),
    ]
    proc = subprocess.run(
        cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ddp = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    # The same global batch, as each rank drew its half.
    train_split, _ = load_splits(cfg.data, cfg.run.seed)
    cached = load_cached(
        train_split, cache_folder(cfg.data, "train", 0), cfg.data.resize, cfg.data.crop
    )
    halves = []
    for rank in (0, 1):
        rt = Runtime(torch.device("cpu"), Dist(rank, 2), amp=False, channels_last=False)
        shard = DeviceSplit.from_cache(cached, rt.device, rank, 2)
        loader = train_loader(cfg, shard, rt, 0, seed_epoch(0, 0, rank))
        assert len(loader) == 1
        halves.append(next(iter(loader))[:2])

    def one_step(batches) -> dict:
        torch.manual_seed(cfg.run.seed)
        model = build_network(cfg, 4)
        optimizer = make_optimizer(model, cfg)
        set_lr(optimizer, lr_at(0, cfg.train))
        loss = sum(F.cross_entropy(model(x), y) for x, y in batches) / len(batches)
        loss.backward()
        optimizer.step()
        return dict(model.named_parameters())

    single, rank0_only = one_step(halves), one_step(halves[:1])
    torch.manual_seed(cfg.run.seed)
    initial = dict(build_network(cfg, 4).named_parameters())
    assert max((single[k] - initial[k]).abs().max().item() for k in single) > 1e-2  # a real step
    for name, value in single.items():
        assert torch.allclose(value, ddp[name], atol=1e-6, rtol=1e-5), name
    assert any(not torch.allclose(rank0_only[k], ddp[k], atol=1e-4) for k in single)


def eager_compile(monkeypatch) -> None:
    """torch.compile with Dynamo alone (the eager backend): Inductor takes minutes on this CPU."""
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, dynamic=None, mode=None: compile_(
        model, backend="eager", dynamic=dynamic))  # fmt: skip


def test_compiled_training_never_recompiles_after_the_first_epoch(tmp_path, monkeypatch):
    """Fixed shapes: one graph for training and one for evaluation, whatever the set sizes."""
    from torch._dynamo.utils import counters

    eager_compile(monkeypatch)
    torch._dynamo.reset()
    counters.clear()
    cfg = tensor_config(tmp_path, **{"data.synthetic_images": 200, "train.epochs": 2,
                                     "train.eval_batch_size": 32, "run.compile": True})  # fmt: skip
    train(cfg, tmp_path / "run", progress=False, stop_after=1)
    assert counters["stats"]["unique_graphs"] == 2  # 6 full batches of 32; 50 val images as 2 x 32
    train(resume_config(tmp_path / "run"), tmp_path / "run", resume=True, progress=False)
    assert counters["stats"]["unique_graphs"] == 2


def test_gpu_train_benchmark_runs_on_the_cpu(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_train", ROOT / "benchmarks" / "gpu_train.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = "--images 96 --size 16 --seconds 0.2 --batch 16 --device cpu"
    rows = bench.main([*args.split(), "--models", "paper-standard,paper-condconv"])
    out = capsys.readouterr().out
    assert [r["model"] for r in rows] == ["paper-standard", "paper-condconv"]
    assert all(r["train_images_per_s"] > 0 and r["timed_images"] >= 16 for r in rows)
    assert "| paper-condconv |" in out and "55 epochs" in out and "12,000" in out


def test_data_cache_command_builds_what_a_run_then_reuses(tmp_path, capsys):
    from condnet.cli import main
    from condnet.commands.common import parse_assignments

    sets = ["data.source=synthetic", "data.synthetic_images=24", "data.synthetic_size=64",
            f"data.cache={tmp_path}", "data.pipeline=tensor"]  # fmt: skip
    assert main(["data", "cache", "--set", *sets]) == 0
    lines = capsys.readouterr().out.splitlines()
    cfg = load_config(None, parse_assignments(sets))
    _, val = load_splits(cfg.data, cfg.run.seed)
    train_folder = cache_folder(cfg.data, "train", cfg.run.seed)
    assert lines[0] == f"train: 24 images 64x64, 0 unreadable left out, in {train_folder}"
    assert lines[1].startswith(f"val: {len(val)} images 64x64, 0 unreadable left out, in ")
    built = (train_folder / "images.npy").stat().st_mtime_ns
    assert main(["data", "cache", "--set", *sets]) == 0  # current: reused, not rebuilt
    assert (train_folder / "images.npy").stat().st_mtime_ns == built
    assert main(["data", "cache", "--set", "data.source=imagefolder"]) == 2  # one-line error
    assert "data.root" in capsys.readouterr().err
