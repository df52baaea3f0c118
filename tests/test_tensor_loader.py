"""The tensor pipeline's loader (`condnet.data.tensor_loader`): its batches equal torchvision's."""

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from condnet.data.datasets import load_splits
from condnet.data.tensor_loader import DeviceSplit, TensorLoader
from condnet.data.transforms import eval_transform, train_transform
from condnet.engine.distributed import Dist
from condnet.engine.evaluation import evaluate
from condnet.engine.runtime import Runtime
from condnet.engine.trainer import build_network
from tests.helpers import (
    STEP,
    array_split,
    boxes_read_back,
    coordinate_images,
    device_split,
    paper_data,
    sampled_at,
    tiny_config,
    write_imagefolder,
)

CPU = Runtime(torch.device("cpu"), Dist(), amp=False, channels_last=False)
NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
PAPER = paper_data()


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


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=NEEDS_CUDA)])
def test_training_crops_are_random_resized_crops_of_their_own_image(device):
    """Coordinate images show where every output pixel came from: each crop is its labelled
    image's box, resized and mirrored as the box's geometry says (computed here), with whole-
    pixel boxes by torchvision's rule, a new draw per epoch and the same draw per seed. On a
    GPU the split, the generator and the transforms are on the device, as in training."""
    count, height, width, crop = 1024, 48, 64, 56
    images = torch.from_numpy(coordinate_images(count, height, width)).to(device)
    sizes = torch.tensor([[height, width]] * count, device=device)
    split = DeviceSplit(images, sizes, torch.arange(count, device=device))
    cfg = tiny_config(
        **{"data.resize": 64, "data.crop": crop, "data.scale": [0.08, 1.0]},
        **{"data.mean": [0, 0, 0], "data.std": [1, 1, 1]},
    ).data

    def epoch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        loader = TensorLoader(split, count, cfg, torch.Generator(device).manual_seed(seed))
        (crops, labels, _), *rest = list(loader)
        assert not rest and crops.shape == (count, 3, crop, crop)
        assert crops.device.type == labels.device.type == device
        return crops.cpu(), labels.cpu()

    crops, labels = epoch(0)
    assert sorted(labels.tolist()) == list(range(count))  # every image once, in a new order
    assert labels.tolist() != list(range(count))
    blue = crops[:, 2] * 255
    assert torch.allclose(blue, (labels % 256).float()[:, None, None], atol=1e-3)
    boxes, flip = boxes_read_back(crops)
    for n in range(0, count, 37):  # every pixel of a sample of the crops
        top, left, h, w = boxes[n]
        rows = STEP * sampled_at(top, h, crop, height, False)
        cols = STEP * sampled_at(left, w, crop, width, flip[n])
        got = crops[n, :2].double() * 255
        torch.testing.assert_close(
            got[0], torch.from_numpy(rows)[:, None].expand(crop, crop), rtol=0, atol=2e-3
        )
        torch.testing.assert_close(
            got[1], torch.from_numpy(cols)[None, :].expand(crop, crop), rtol=0, atol=2e-3
        )
    assert np.abs(boxes - np.round(boxes)).max() < 1e-2  # whole pixels
    top, left, h, w = np.round(boxes).T
    assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    area = h * w / (height * width)
    assert ((w + 0.5) * (h + 0.5) >= 0.08 * height * width).all() and (area <= 1).all()
    assert ((w + 0.5) / (h - 0.5) >= 3 / 4).all() and ((w - 0.5) / (h + 0.5) <= 4 / 3).all()
    assert abs(flip.mean() - 0.5) < 0.07
    # The sizes and places torchvision's RandomResizedCrop draws for the same image.
    torch.manual_seed(0)
    reference = np.array(
        [
            T.RandomResizedCrop.get_params(torch.empty(3, height, width), cfg.scale, cfg.ratio)
            for _ in range(count)
        ],
        dtype=np.float64,
    )
    ref_area = reference[:, 2] * reference[:, 3] / (height * width)
    # Tolerances: about 4.5 standard deviations of the differences between two such draws.
    assert abs(area.mean() - ref_area.mean()) < 0.045 and abs(area.std() - ref_area.std()) < 0.025
    for start, length, size, col in ((top, h, height, 0), (left, w, width, 1)):
        centre = (start + length / 2) / size
        ref_centre = (reference[:, col] + reference[:, col + 2] / 2) / size
        assert abs(centre.mean() - ref_centre.mean()) < 0.025
        assert abs(centre.std() - ref_centre.std()) < 0.02
    # Another epoch's generator draws other boxes; the same seed draws the same ones again.
    again, same_labels = epoch(0)
    assert torch.equal(again, crops) and torch.equal(same_labels, labels)
    other, _ = epoch(1)
    other_boxes, _ = boxes_read_back(other)
    assert np.abs(np.sort(other_boxes, 0) - np.sort(boxes, 0)).max() > 1


def test_normalised_values_match_the_torchvision_path(tmp_path):
    split = array_split(count=200)
    tensor_images, _, _ = next(
        iter(
            TensorLoader(
                device_split(split, tmp_path), 200, PAPER, torch.Generator().manual_seed(0)
            )
        )
    )
    transform = train_transform(
        56, scale=PAPER.scale, ratio=PAPER.ratio, hflip=PAPER.hflip, mean=PAPER.mean, std=PAPER.std
    )
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


def test_padded_evaluation_gives_exactly_the_unpadded_metrics(tmp_path):
    cfg = tiny_config(**{"data.resize": 64, "data.crop": 56})
    split = device_split(array_split(count=50, classes=10), tmp_path)  # top-5 of 10 can miss
    model = build_network(cfg, 10)
    padded = TensorLoader(split, 16, cfg.data)
    batches = list(padded)
    assert len(padded) == 4 and [b[0].shape[0] for b in batches] == [16] * 4
    assert (batches[-1][1] == -100).sum() == 14
    result = evaluate(model, padded, CPU)
    whole = evaluate(model, TensorLoader(split, 50, cfg.data), CPU)
    assert result["count"] == whole["count"] == 50
    assert (result["top1"], result["top5"]) == (whole["top1"], whole["top5"])
    assert result["top1"] < result["top5"] < 100
    assert result["loss"] == pytest.approx(whole["loss"], rel=1e-6)
