"""Decoding image files of any format, size and mode to RGB, with a guard against bombs."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
MAX_PIXELS = 64_000_000  # larger declared sizes are refused as decompression bombs


class BadImage(Exception):
    """An image file that cannot be decoded; the message names the file and the reason."""


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def load_rgb(path: str | Path) -> Image.Image:
    """Decode `path` to an RGB image (grayscale, RGBA, palette, CMYK and 16-bit included)."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    pillows_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # condnet's own below
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise BadImage(
                        f"{path}: {img.width}x{img.height} pixels exceeds the limit of "
                        f"{MAX_PIXELS:,} pixels (refused as a possible decompression bomb)"
                    )
                img.load()
                return _to_rgb(img)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage(f"{path}: not an image in a format this decoder knows") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise BadImage(f"{path}: refused as a decompression bomb ({err})") from None
    except (OSError, SyntaxError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise BadImage(f"{path}: cannot decode ({reason})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pillows_limit


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.point(lambda v: v * (1 / 256)).convert("L")  # 16-bit -> 8-bit
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")
