"""Decoding (`condnet.data.images`): every mode to RGB pixel for pixel, and the 64-Mpixel limit.

Each expected image is computed here with NumPy from the pixels the file was written with,
by the rule the README states (16-bit scaled to 8 bits, transparency composited on white,
CMYK as Pillow converts it), so a decoder that clips, composites on black or drops the alpha
differs in many pixels.
"""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from condnet.data.images import MAX_PIXELS, BadImage, load_rgb
from tests.helpers import png_declaring, write_bad_images, write_odd_images

RNG = np.random.default_rng(0)
SHAPE = (24, 33)  # height, width: not square, so a transposed image cannot match


def decoded(path: Path) -> np.ndarray:
    image = load_rgb(path)
    assert image.mode == "RGB"
    return np.asarray(image).astype(np.int64)


def on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """`rgb` (H x W x 3) with `alpha` (H x W) over a white background, rounded to integers:
    what Pillow's `alpha_composite` onto opaque white gives, exactly."""
    rgb, alpha = rgb.astype(np.int64), alpha.astype(np.int64)[..., None]
    return np.rint((rgb * alpha + 255 * (255 - alpha)) / 255).astype(np.int64)


def alpha_ramp() -> np.ndarray:
    """Every alpha from fully transparent to opaque, in random places."""
    return RNG.permutation(np.resize(np.arange(256, dtype=np.uint8), SHAPE).ravel()).reshape(SHAPE)


def test_16_bit_grayscale_is_scaled_to_8_bits(tmp_path):
    deep = RNG.integers(0, 65536, SHAPE, dtype=np.uint16)
    deep[0, :4] = [0, 255, 256, 65535]  # the edges of the scaling
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    expected = np.repeat((deep >> 8)[..., None], 3, axis=2)
    assert np.array_equal(decoded(tmp_path / "deep.png"), expected)


def test_rgba_is_composited_on_white(tmp_path):
    rgb = RNG.integers(0, 256, (*SHAPE, 3), dtype=np.uint8)
    alpha = alpha_ramp()
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(decoded(tmp_path / "rgba.png"), on_white(rgb, alpha))


def test_gray_with_alpha_is_composited_on_white(tmp_path):
    gray, alpha = RNG.integers(0, 256, SHAPE, dtype=np.uint8), alpha_ramp()
    Image.fromarray(np.dstack([gray, alpha]), "LA").save(tmp_path / "la.png")
    assert Image.open(tmp_path / "la.png").mode == "LA"
    expected = on_white(np.repeat(gray[..., None], 3, axis=2), alpha)
    assert np.array_equal(decoded(tmp_path / "la.png"), expected)


@pytest.mark.parametrize("transparent", ["per entry", "one index", "none"])
def test_palette_images_use_their_colours_and_transparency(tmp_path, transparent):
    indices = RNG.integers(0, 16, SHAPE, dtype=np.uint8)
    palette = RNG.integers(0, 256, (16, 3), dtype=np.uint8)
    alphas = {
        "per entry": RNG.integers(0, 256, 16, dtype=np.uint8),  # PNG's tRNS: one alpha per entry
        "one index": np.where(np.arange(16) == 3, 0, 255).astype(np.uint8),
        "none": np.full(16, 255, dtype=np.uint8),
    }[transparent]
    image = Image.fromarray(indices, "P")
    image.putpalette(palette.ravel().tolist())
    options = {
        "per entry": {"transparency": alphas.tobytes()},
        "one index": {"transparency": 3},
        "none": {},
    }[transparent]
    image.save(tmp_path / "palette.png", **options)
    assert Image.open(tmp_path / "palette.png").mode == "P"
    expected = on_white(palette[indices], alphas[indices])
    assert np.array_equal(decoded(tmp_path / "palette.png"), expected)


def test_cmyk_jpeg_is_converted_as_pillow_converts_it(tmp_path):
    cmyk = RNG.integers(0, 256, (*SHAPE, 4), dtype=np.uint8)
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "cmyk.jpg")
    stored = np.asarray(Image.open(tmp_path / "cmyk.jpg")).astype(np.int64)  # after JPEG's loss
    assert stored.shape == (*SHAPE, 4)
    # Pillow's rule: each of R, G, B = (255 - K) - (C, M, Y) * (255 - K) / 255, its rounding.
    ink, key = stored[..., :3], 255 - stored[..., 3:]
    product = ink * key + 128
    expected = key - (((product >> 8) + product) >> 8)
    assert np.array_equal(decoded(tmp_path / "cmyk.jpg"), expected)


def test_grayscale_is_replicated_to_three_channels(tmp_path):
    gray = RNG.integers(0, 256, SHAPE, dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    assert np.array_equal(decoded(tmp_path / "gray.png"), np.repeat(gray[..., None], 3, axis=2))


@pytest.mark.parametrize("kind", ["JPEG", "PNG"])
def test_a_truncated_file_is_refused_whatever_pillow_was_told(tmp_path, monkeypatch, kind):
    """Cut inside its pixel data; Pillow's global switch to pad truncated files, as another
    library may leave it, does not make condnet decode one."""
    noise = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # does not compress: long data
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format=kind)
    data = buffer.getvalue()
    path = tmp_path / f"cut.{kind.lower()}"
    path.write_bytes(data[: len(data) * 3 // 4])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(BadImage, match=rf"cut.{kind.lower()}: cannot decode"):
        load_rgb(path)


# --- the decompression-bomb limit -------------------------------------------------------------


@pytest.fixture
def without_pillows_own_limit(monkeypatch):
    """Pillow refuses images above its own MAX_IMAGE_PIXELS (89 Mpixels by default); turned
    off, only condnet's limit can refuse what these tests declare."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)


def test_one_pixel_over_the_limit_is_refused_before_decoding(tmp_path, without_pillows_own_limit):
    assert 12277 * 5213 == MAX_PIXELS + 1 == 64_000_001
    png_declaring(tmp_path / "bomb.png", 12277, 5213)
    with pytest.raises(BadImage, match=r"bomb.png: 12277x5213 pixels exceeds the limit"):
        load_rgb(tmp_path / "bomb.png")


def test_the_bomb_message_states_condnets_limit_and_the_images_size(tmp_path):
    """10000 x 10000 is above Pillow's own limit too (89,478,485 pixels): the message is
    condnet's, with its limit, not Pillow's."""
    png_declaring(tmp_path / "huge.png", 10000, 10000)
    with pytest.raises(BadImage) as caught:
        load_rgb(tmp_path / "huge.png")
    message = str(caught.value)
    assert "huge.png: 10000x10000 pixels exceeds the limit of 64,000,000 pixels" in message
    assert "89478485" not in message and "89,478,485" not in message
    assert Image.MAX_IMAGE_PIXELS == 89478485  # Pillow's setting is left as it was


def test_an_image_at_the_limit_decodes(tmp_path, without_pillows_own_limit):
    """8000 x 8000 = 64 Mpixels exactly, stored as one bit per pixel (8 kB on disk)."""
    Image.new("1", (8000, 8000), 1).save(tmp_path / "large.png")
    image = load_rgb(tmp_path / "large.png")
    assert image.size == (8000, 8000) and image.mode == "RGB"
    assert image.getextrema() == ((255, 255),) * 3


def test_odd_images_decode_to_rgb(tmp_path):
    """Every mode decodes (each is checked pixel for pixel by the tests above)."""
    for path in write_odd_images(tmp_path):
        img = load_rgb(path)
        assert img.mode == "RGB" and min(img.size) >= 10, path.name


def test_bad_images_are_named(tmp_path):
    for path in write_bad_images(tmp_path):
        with pytest.raises(BadImage, match=path.name):
            load_rgb(path)
