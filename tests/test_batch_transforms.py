"""The paper's transforms on whole batches (`condnet.data.batch_transforms`) against torchvision."""

import torch
import torch.nn.functional as F
import torchvision.transforms as T

from condnet.data.batch_transforms import center_crops, resized_crops, sample_boxes
from tests.helpers import STEP, coordinate_images, paper_data, sampled_at

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


def test_every_place_a_box_fits_is_drawn_alike():
    """An 8 x 8 box on a 12 x 12 image has 5 x 5 places, each drawn with chance 1/25 (as
    torchvision draws them: top and left uniform over 0 .. 12 - 8)."""
    sizes = torch.tensor([[12, 12]] * 5000)
    boxes = sample_boxes(sizes, [64 / 144] * 2, [1.0, 1.0], torch.Generator().manual_seed(0))
    assert (boxes[:, 2:] == 8).all()
    for axis in (0, 1):
        counts = torch.bincount(boxes[:, axis].long(), minlength=5)
        assert len(counts) == 5 and (counts > 850).all() and (counts < 1150).all(), counts


def test_crop_box_fallback_is_torchvision_s_central_crop():
    sizes = torch.tensor([[10, 100], [100, 10], [50, 50]])
    boxes = sample_boxes(sizes, [0.9, 1.0], [3 / 4, 4 / 3], torch.Generator().manual_seed(0))
    assert boxes.tolist() == [[0, 43, 10, 13], [43, 0, 13, 10], boxes[2].tolist()]
    generator = torch.Generator().manual_seed(0)
    assert sample_boxes(sizes[2:], [2.0, 2.0], [1.0, 1.0], generator).tolist() == [[0, 0, 50, 50]]


def test_resized_crops_sample_each_box_where_its_pixels_lie():
    """Coordinate images (red 4 x row, green 4 x column) read back where each output pixel
    sampled; compared with the box's own geometry, computed here, for boxes that shrink,
    enlarge, touch the edges, are not square, and with and without the flip."""
    height, width, crop = 40, 56, 24
    boxes = [  # top, left, height, width
        (0, 0, height, width),  # the whole image
        (5, 7, 20, 16),  # enlarged (20 x 16 to 24 x 24)
        (3, 10, 36, 30),  # shrunk
        (height - 12, width - 9, 12, 9),  # enlarged in the bottom-right corner
        (0, 0, 7, 31),  # the top-left corner, long and flat
        (11, 40, 29, 16),  # down to the bottom edge
    ]
    count = 2 * len(boxes)
    images = torch.from_numpy(coordinate_images(count, height, width)).permute(0, 3, 1, 2).float()
    box = torch.tensor(boxes * 2, dtype=torch.float64)
    flip = torch.arange(count) >= len(boxes)
    out = resized_crops(images, box, crop, flip).double()
    for n, ((top, left, h, w), flipped) in enumerate(zip(boxes * 2, flip.tolist(), strict=True)):
        rows = sampled_at(top, h, crop, height, False)
        cols = sampled_at(left, w, crop, width, flipped)
        want = torch.stack(
            [
                torch.from_numpy(STEP * rows)[:, None].expand(crop, crop),
                torch.from_numpy(STEP * cols)[None, :].expand(crop, crop),
                torch.full((crop, crop), float(n), dtype=torch.float64),
            ]
        )
        torch.testing.assert_close(out[n], want, rtol=0, atol=2e-3, msg=f"box {n}")
    # The whole image without a flip: F.interpolate's bilinear resize of the same image.
    expected = F.interpolate(images[:1], size=(crop, crop), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[0].float(), expected[0], rtol=0, atol=2e-3)


def test_center_crop_offsets_round_half_to_even():
    images = torch.arange(5 * 9, dtype=torch.uint8).view(1, 5, 9, 1)
    crop = center_crops(images, torch.tensor([0]), torch.tensor([[5, 9]]), 2)
    assert crop[0, :, :, 0].tolist() == [[22, 23], [31, 32]]  # offsets round(1.5)=2, round(3.5)=4
