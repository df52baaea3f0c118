"""`condnet predict` on images of every format and mode, broken files, and all three model files."""

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from condnet.cli import main
from condnet.data.images import load_rgb
from condnet.data.transform_spec import TransformSpec
from condnet.deploy.bundle import Bundle
from condnet.deploy.export import export_onnx
from condnet.deploy.predict import Failure, Prediction, load_classifier, predict
from condnet.deploy.weights import save_weights
from tests.deploy_helpers import CLASS_NAMES, EVAL_TRANSFORM, small_model, write_checkpoint


def _gray16(picture: Image.Image) -> Image.Image:
    image = Image.fromarray(np.asarray(picture.convert("L"), dtype=np.uint16) * 257)
    assert image.mode == "I;16"
    return image


# File name -> how the picture is stored: every format and mode that predict must read.
STORED = {
    "a_rgb.jpg": lambda im: im,
    "b_gray.png": lambda im: im.convert("L"),
    "c_rgba.png": lambda im: im.convert("RGBA"),
    "d_palette.png": lambda im: im.convert("P"),
    "e_cmyk.jpg": lambda im: im.convert("CMYK"),
    "f_gray16.png": _gray16,
    "g_rgb.webp": lambda im: im,
    "h_rgb.bmp": lambda im: im,
    "i_tiny.png": lambda im: im.resize((10, 10)),
    "sub/j_nested.png": lambda im: im,
    "sub/deeper/k_nested.jpg": lambda im: im,
}
GOOD = list(STORED)
BROKEN = ["x_empty.jpg", "y_text.jpg", "z_truncated.jpg"]


def in_folder_order(names: list[str]) -> list[str]:
    """Depth-first, each folder's entries sorted by name (so sub/deeper/ comes before sub/j)."""
    return sorted(names, key=lambda n: n.split("/"))


def _picture(seed: int, size: tuple[int, int] = (90, 70)) -> Image.Image:
    """A smooth random colour picture: different seeds give clearly different images."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(low).resize(size, Image.Resampling.BICUBIC)


def _write_images(folder):
    (folder / "sub/deeper").mkdir(parents=True)
    for seed, (name, store) in enumerate(STORED.items()):
        image = store(_picture(seed))
        image.save(folder / name)
        with Image.open(folder / name) as stored:
            assert stored.mode == image.mode
    (folder / "x_empty.jpg").write_bytes(b"")
    (folder / "y_text.jpg").write_text("this is not a picture\n")
    jpeg = (folder / "a_rgb.jpg").read_bytes()
    (folder / "z_truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "notes.txt").write_text("not an image extension: ignored in folders")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Images, plus the same model as a checkpoint, a weights file and an ONNX file."""
    root = tmp_path_factory.mktemp("predict")
    _write_images(root / "images")
    torch.manual_seed(0)  # module fixtures run before the per-test seeding in conftest.py
    model = small_model("condconv")
    ckpt = write_checkpoint(root / "model.pt", model, EVAL_TRANSFORM)
    bundle = Bundle(model, CLASS_NAMES, TransformSpec.from_dict(EVAL_TRANSFORM))
    save_weights(bundle, root / "model.safetensors")
    export_onnx(bundle, root / "model.onnx")
    return {
        "images": root / "images",
        "pt": ckpt,
        "model": model,
        "root": root,
        "safetensors": root / "model.safetensors",
        "onnx": root / "model.onnx",
    }


def _run_json(capsys, *args):
    code = main(["predict", *map(str, args), "--json"])
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines()], captured.err


def test_every_mode_decodes_and_folders_are_read_recursively_in_order(files, capsys):
    images = files["images"]
    code, results, err = _run_json(capsys, files["pt"], images, "--batch-size", "4")
    assert code == 1  # the broken files
    assert [r["path"] for r in results] == [str(images / n) for n in in_folder_order(GOOD)]
    for result in results:
        probabilities = [c["probability"] for c in result["top"]]
        assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1 + 1e-9
        assert all(c["class"] == CLASS_NAMES[c["index"]] for c in result["top"])
    assert len({r["top"][0]["class"] for r in results}) > 1  # the images are told apart
    lines = err.splitlines()
    assert len(lines) == len(BROKEN)  # exactly one line per unreadable file
    for line, name in zip(lines, BROKEN, strict=False):
        assert line.startswith("condnet predict: skipped ") and str(images / name) in line


def test_probabilities_follow_the_stored_eval_transform(files):
    classifier = load_classifier(files["pt"])
    path = files["images"] / "e_cmyk.jpg"
    (result,) = predict(classifier, [path], topk=7)
    image = torch.from_numpy(TransformSpec.from_dict(EVAL_TRANSFORM).to_array(load_rgb(path)))
    assert image.shape == (3, 32, 32)
    with torch.no_grad():
        want = files["model"](image[None]).softmax(1)[0].double()
    got = torch.tensor([p for _, _, p in sorted(result.top)], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_same_top5_from_checkpoint_weights_and_onnx(files, capsys):
    tops = {}
    for kind in ("pt", "safetensors", "onnx"):
        code, results, _ = _run_json(capsys, files[kind], files["images"])
        assert code == 1 and len(results) == len(GOOD)
        tops[kind] = [r["top"] for r in results]
    for kind in ("safetensors", "onnx"):
        for got, want in zip(tops[kind], tops["pt"], strict=False):
            assert [c["class"] for c in got] == [c["class"] for c in want]
            for g, w in zip(got, want, strict=False):
                assert g["probability"] == pytest.approx(w["probability"], abs=1e-5)


def test_only_good_files_exit_zero_and_text_output(files, capsys):
    paths = [files["images"] / n for n in ("a_rgb.jpg", "i_tiny.png")]
    assert main(["predict", str(files["onnx"]), *map(str, paths), "--topk", "3"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert captured.err == "" and len(lines) == 2 * 4
    assert lines[0] == str(paths[0]) and lines[4] == str(paths[1])
    probability, name = lines[1].split()
    assert name in CLASS_NAMES and 0 < float(probability) <= 1


@pytest.mark.parametrize("name", BROKEN + ["missing.png"])
def test_each_bad_file_is_one_stderr_line_and_exit_1(files, capsys, name):
    good = files["images"] / "a_rgb.jpg"
    code, results, err = _run_json(capsys, files["safetensors"], files["images"] / name, good)
    assert code == 1 and [r["path"] for r in results] == [str(good)]
    assert err.count("\n") == 1 and name in err and "Traceback" not in err


def test_decompression_bomb_is_skipped(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(40_000, 40_000))
    results = list(predict(load_classifier(_small_checkpoint(tmp_path)), [bomb]))
    assert len(results) == 1 and isinstance(results[0], Failure)
    assert str(bomb) in results[0].reason


def test_an_image_too_elongated_to_resize_is_skipped(tmp_path):
    thin = tmp_path / "thin.png"
    Image.new("L", (40_000, 1)).save(thin)  # 64 x 2,560,000 after resizing the short side
    results = list(predict(load_classifier(_small_checkpoint(tmp_path)), [thin]))
    assert isinstance(results[0], Failure) and "too elongated" in results[0].reason


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that declares `width` x `height` 8-bit gray pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 1024)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def _small_checkpoint(folder):
    return write_checkpoint(folder / "model.pt", small_model("standard"))


def test_batches_keep_order_around_failures(files):
    classifier = load_classifier(files["pt"])
    results = list(predict(classifier, [files["images"]], batch_size=3))
    expected = in_folder_order(GOOD + BROKEN)
    assert [r.path for r in results] == [str(files["images"] / n) for n in expected]
    failed = [r.path for r in results if isinstance(r, Failure)]
    assert failed == [str(files["images"] / n) for n in BROKEN]
    assert all(isinstance(r, Prediction) for r in results if r.path not in failed)


def test_a_folder_that_cannot_be_listed_is_one_failure(files, monkeypatch):
    blocked = files["images"] / "sub"
    real = os.scandir

    def scandir(path):
        if Path(path) == blocked:
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    results = list(predict(load_classifier(files["onnx"]), [files["images"]]))
    failed = [r for r in results if isinstance(r, Failure)]
    assert [r.path for r in failed] == [str(blocked)] + [str(files["images"] / n) for n in BROKEN]
    assert "cannot list the folder (Permission denied)" in failed[0].reason
    assert len(results) == len(GOOD) - 2 + len(failed)  # sub/ held two of the images


def test_default_transform_when_the_checkpoint_has_none(tmp_path):
    classifier = load_classifier(_small_checkpoint(tmp_path))
    assert (classifier.transform.resize, classifier.transform.crop) == (64, 56)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--topk", "0"], "--topk and --batch-size must be positive"),
        (["--batch-size", "0"], "--topk and --batch-size must be positive"),
    ],
)
def test_usage_errors(files, capsys, args, message):
    assert main(["predict", str(files["pt"]), str(files["images"]), *args]) == 2
    assert message in capsys.readouterr().err


def test_no_images_and_bad_model_are_usage_errors(files, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(files["pt"]), str(empty)]) == 2
    assert "no image files found" in capsys.readouterr().err
    fake = tmp_path / "fake.onnx"
    fake.write_text("not onnx")
    assert main(["predict", str(fake), str(files["images"])]) == 2
    err = capsys.readouterr().err
    assert "not a readable ONNX model" in err and err.count("\n") == 1


@pytest.mark.parametrize("size", [(70, 50), (50, 70), (33, 33), (200, 41)])
def test_predicts_transform_is_torchvisions_within_one_gray_level(size):
    """Predict resizes with Pillow (no torch, so an ONNX model runs without it); training's
    evaluation with torchvision's antialiased tensor resize. They differ by at most one gray
    level per pixel, and the crop is in the same place."""
    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    spec = TransformSpec(resize=36, crop=32)
    ours, theirs = spec.to_array(image), spec.build()(image).numpy()
    assert ours.shape == theirs.shape == (3, 32, 32) and ours.dtype == np.float32
    one_level = 1 / 255 / np.asarray(spec.std, dtype=np.float32)[:, None, None]
    assert (np.abs(ours - theirs) <= one_level * 1.001).all()
    assert np.mean(ours == theirs) > 0.5  # most pixels exactly equal


NO_TORCH = """
import sys
from condnet.cli import build_parser, main
build_parser()
assert "torch" not in sys.modules, "building the parser imported torch"
code = main(["predict", "--json", *sys.argv[1:]])
print("torch" in sys.modules, code)
"""


def test_the_command_line_and_an_onnx_prediction_never_import_torch(files):
    """`condnet --help` starts at once, and predict with an ONNX model runs without torch
    (the startup times and memory are measured by benchmarks/cli_startup.py)."""
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(files["onnx"]), str(files["images"] / "a_rgb.jpg")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    *predictions, last = done.stdout.strip().splitlines()
    assert last == "False 0" and json.loads(predictions[0])["top"]
