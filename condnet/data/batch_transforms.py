"""The paper's transforms for whole uint8 batches, on the batch's device, with no per-image Python.

Images are canvases (N x H x W x 3 uint8) with each image's true height and width beside them
(see `condnet.data.cache`). Training: torchvision's RandomResizedCrop, sampled per image with
the same rule, crop and resize done together by one affine `grid_sample` (bilinear,
align_corners=False, which is `F.interpolate`'s sampling; no antialiasing, so a box larger
than the crop is not low-pass filtered first), the horizontal flip folded into the same affine
map, then the scaling to [0, 1] and the normalisation. Evaluation: the center crop, gathered
exactly. Random numbers come from one `torch.Generator` on the device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

TRIES = 10  # torchvision's RandomResizedCrop attempts before its fallback


def sample_boxes(
    sizes: torch.Tensor, scale: Sequence[float], ratio: Sequence[float], generator: torch.Generator
) -> torch.Tensor:
    """Per image a crop box (top, left, height, width) by torchvision's RandomResizedCrop rule.

    Up to 10 draws of an area fraction in `scale` and a log-uniform aspect ratio in `ratio`;
    the first whose rounded box fits wins, at a uniform integer position. When none fits: the
    central crop of the whole image with its aspect ratio clamped into `ratio`. `sizes` is
    N x 2 (height, width); the result is N x 4, float64 holding integers.
    """
    draws = torch.rand(
        sizes.shape[0], 2 * TRIES + 2, generator=generator, device=sizes.device, dtype=torch.float64
    )
    height, width = sizes[:, :1].double(), sizes[:, 1:].double()
    area = height * width * (scale[0] + (scale[1] - scale[0]) * draws[:, :TRIES])
    low, high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(low + (high - low) * draws[:, TRIES : 2 * TRIES])
    w, h = torch.round(torch.sqrt(area * aspect)), torch.round(torch.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # argmax returns the first maximum
    found = fits.any(1, keepdim=True)
    image_ratio = width / height
    h = torch.where(
        found,
        h.gather(1, first),
        torch.where(image_ratio < ratio[0], torch.round(width / ratio[0]), height),
    )
    w = torch.where(
        found,
        w.gather(1, first),
        torch.where(image_ratio > ratio[1], torch.round(height * ratio[1]), width),
    )
    top = torch.where(
        found,
        torch.floor(draws[:, -2:-1] * (height - h + 1)),
        torch.div(height - h, 2, rounding_mode="floor"),
    )
    left = torch.where(
        found,
        torch.floor(draws[:, -1:] * (width - w + 1)),
        torch.div(width - w, 2, rounding_mode="floor"),
    )
    return torch.cat([top, left, h, w], 1)


def resized_crops(
    images: torch.Tensor, boxes: torch.Tensor, crop: int, flip: torch.Tensor
) -> torch.Tensor:
    """Each image's box resized to crop x crop, mirrored left-right where `flip`.

    `images` is N x C x H x W float. Output pixel u samples the box at
    left + (u + 0.5) * width / crop - 0.5, as `F.interpolate(align_corners=False)` does.
    """
    count, channels, height, width = images.shape
    top, left, h, w = boxes.unbind(1)
    sign = 1.0 - 2.0 * flip.double()
    zero = torch.zeros_like(top)
    theta = torch.stack(
        [
            torch.stack([sign * w / width, zero, (2 * left + w) / width - 1], 1),
            torch.stack([zero, h / height, (2 * top + h) / height - 1], 1),
        ],
        1,
    ).to(images.dtype)
    grid = F.affine_grid(theta, [count, channels, crop, crop], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def center_crops(
    images: torch.Tensor, index: torch.Tensor, sizes: torch.Tensor, crop: int
) -> torch.Tensor:
    """images[index] center-cropped to crop x crop (N x crop x crop x 3, the input's dtype).

    Offsets as torchvision's CenterCrop: round((size - crop) / 2), halves to even. `sizes` are
    the indexed images' (height, width).
    """
    steps = torch.arange(crop, device=images.device)
    top = torch.round((sizes[:, 0] - crop) / 2).long()
    left = torch.round((sizes[:, 1] - crop) / 2).long()
    rows, cols = top[:, None] + steps, left[:, None] + steps
    return images[index[:, None, None], rows[:, :, None], cols[:, None, :]]


def normalize_(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """0-255 floats in place to (x / 255 - mean) / std, the float operations of
    `ToDtype(float32, scale=True)` then `Normalize`. `mean`, `std`: 1 x 3 x 1 x 1."""
    return images.mul_(1 / 255).sub_(mean).div_(std)
