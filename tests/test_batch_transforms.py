"""The paper's transforms on whole batches (`condnet.data.batch_transforms`) against torchvision."""

import torch
import torch.nn.functional as F
import torchvision.transforms as T

from condnet.data.batch_transforms import center_crops, resized_crops, sample_boxes
from tests.helpers import paper_data

PAPER = paper_data()


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


def test_center_crop_offsets_round_half_to_even():
    images = torch.arange(5 * 9, dtype=torch.uint8).view(1, 5, 9, 1)
    crop = center_crops(images, torch.tensor([0]), torch.tensor([[5, 9]]), 2)
    assert crop[0, :, :, 0].tolist() == [[22, 23], [31, 32]]  # offsets round(1.5)=2, round(3.5)=4
