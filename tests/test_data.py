"""Each data source reads its on-disk format; subsets; transforms; safe unpickling; layout
errors."""

import builtins
import gc
import os
import pickle
import tracemalloc
import warnings
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from condnet.cli import main
from condnet.config import from_dict
from condnet.data import sources
from condnet.data.datasets import load_splits, make_datasets, subset
from condnet.data.safe_pickle import load_pickle
from condnet.engine.metrics import read_metrics
from condnet.errors import CondnetError
from tests.helpers import (
    image_config,
    plain_folder,
    write_cifar,
    write_idx,
    write_imagefolder,
    write_imagenet64,
)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def data_cfg(**data):
    return from_dict({"data": data}).data


def test_imagefolder(tmp_path):
    write_imagefolder(tmp_path)
    train, val = load_splits(data_cfg(source="imagefolder", root=str(tmp_path)), 0)
    assert train.class_names == ["cat", "dog", "fish"] and len(train) == 12 and len(val) == 12
    train_set, val_set = make_datasets(data_cfg(resize=64, crop=56), train, val)
    image, label = val_set[5]
    assert image.shape == (3, 56, 56) and image.dtype == torch.float32 and label == 1
    assert train_set[0][0].shape == (3, 56, 56)


def pixels(rows: np.ndarray, side: int) -> np.ndarray:
    """Rows of three planes (red, green, blue; each `side` x `side`, row-major) as N x side x
    side x 3 images, pixel by pixel: the formats' definition, not the readers' reshape."""
    images = np.empty((len(rows), side, side, 3), dtype=np.uint8)
    for y in range(side):
        for x in range(side):
            for c in range(3):
                images[:, y, x, c] = rows[:, c * side * side + y * side + x]
    return images


def raw_batches(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """The rows and labels of batch files written by the tests (trusted: plain pickle)."""
    batches = [
        dict(np.load(p)) if p.suffix == ".npz" else pickle.loads(p.read_bytes(), encoding="latin1")
        for p in paths
    ]
    labels = [np.asarray(b["labels" if "labels" in b else "fine_labels"]) for b in batches]
    return np.concatenate([b["data"] for b in batches]), np.concatenate(labels)


@pytest.mark.parametrize("npz, side", [(False, 64), (True, 64), (False, 32)])
def test_imagenet64_subset_reindexed_pixel_exact(tmp_path, npz, side):
    # Label 6, one past the largest chosen class, must not be taken for one of them.
    batches = ((1, 2, 6, 3, 5), (2, 5, 7, 6))
    root = write_imagenet64(tmp_path / "in64", batches, npz=npz, side=side)
    classes = tmp_path / "classes.txt"
    classes.write_text("# chosen classes\n5 five\n\n2\n")
    train, val = load_splits(data_cfg(source="imagenet64", root=str(root), classes=str(classes)), 0)
    assert train.class_names == ["five", "class 2"]
    for split, stem in ((train, "train_data_batch_"), (val, "val_data")):
        rows, original = raw_batches(sorted(root.glob(stem + "*")))
        keep = np.isin(original, [5, 2])
        assert np.array_equal(split.labels, np.where(original[keep] == 5, 0, 1))
        assert split.images.shape == (keep.sum(), side, side, 3)
        assert np.array_equal(split.images, pixels(rows[keep], side))


def traced_peak(function, *args):
    """`function(*args)` and the peak of the memory Python and NumPy allocated meanwhile."""
    tracemalloc.start()
    try:
        result = function(*args)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("npz", [False, True])
def test_imagenet64_holds_one_batch_at_a_time(tmp_path, monkeypatch, npz):
    rng = np.random.default_rng(1)
    batches = [tuple(rng.integers(1, 101, 300).tolist()) for _ in range(8)]
    root = write_imagenet64(tmp_path / "in64", batches, npz=npz)
    classes = tmp_path / "classes.txt"
    classes.write_text("".join(f"{c}\n" for c in range(1, 11)))  # 10 of 100 classes
    _, one_batch = traced_peak(sources._load_batch, sources._find_batches(root, "train_data")[0])
    held, load_batch = [], sources._load_batch

    def only_one_held(path):
        assert all(ref() is None for ref in held), f"{path} read while an earlier batch is held"
        images, labels = load_batch(path)
        held.append(weakref.ref(images))
        return images, labels

    monkeypatch.setattr(sources, "_load_batch", only_one_held)
    (train, _), peak = traced_peak(sources.read_imagenet64, root, classes)
    assert len(held) == 9  # 8 training batches and the validation batch
    assert 0 < len(train) < len(batches) * 300 / 5
    # Reading one batch, plus what is kept (twice while it is assembled); reading every batch
    # before choosing would need more than 8 batches.
    assert peak < one_batch + 2 * train.images.nbytes


def test_imagenet64_refuses_code_in_pickles(tmp_path):
    root = tmp_path / "in64"
    root.mkdir()
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (root / "train_data_batch_1").write_bytes(pickle.dumps({"data": Payload(), "labels": [1]}))
    (tmp_path / "c.txt").write_text("1\n")
    with pytest.raises(CondnetError, match="refused"):
        load_splits(
            data_cfg(source="imagenet64", root=str(root), classes=str(tmp_path / "c.txt")), 0
        )
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_pickles_of_every_protocol_load(tmp_path, protocol):
    batch = {
        "data": np.arange(24, dtype=np.uint8).reshape(2, 12),
        "labels": [3, 1],
        "strided": np.arange(12.0).reshape(3, 4).T,
        "mean": np.float32(0.5),
        "name": b"x",
    }
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    if protocol == 5:  # NumPy's protocol-5 form: the array rebuilt from its bytes
        assert b"_frombuffer" in path.read_bytes()
    loaded = load_pickle(path)
    for key in ("data", "strided"):
        assert loaded[key].dtype == batch[key].dtype and np.array_equal(loaded[key], batch[key])
    assert loaded["labels"] == [3, 1] and loaded["name"] == b"x"
    assert loaded["mean"] == np.float32(0.5)


class Call:
    """Pickles as a call of `function(*args)`: what a malicious batch file holds."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def attacks(marker: Path) -> dict[str, object]:
    evil_npy = marker.with_name("evil.npy")
    np.save(evil_npy, np.array([Call(Path.touch, marker)], dtype=object), allow_pickle=True)
    touch = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    frombuffer = np._core.numeric._frombuffer  # admitted: the attack hides in its arguments
    return {
        "os.system": Call(os.system, f"touch {marker}"),
        "builtins.eval": Call(builtins.eval, touch),
        "numpy.load": Call(np.load, str(evil_npy), None, True),  # unpickles with plain pickle
        "numpy runstring": Call(np.testing._private.utils.runstring, touch, {}),  # exec
        "inside an array": Call(frombuffer, Call(os.system, f"touch {marker}"), "u1", (1,), "C"),
    }


@pytest.mark.parametrize("protocol", [2, 5])
def test_attack_pickles_are_refused_without_running(tmp_path, protocol):
    marker = tmp_path / "code-ran"
    for name, payload in attacks(marker).items():
        path = tmp_path / "batch"
        path.write_bytes(pickle.dumps({"data": payload, "labels": [1]}, protocol=protocol))
        with pytest.raises(CondnetError, match="refused to unpickle: refused global"):
            load_pickle(path)
        assert not marker.exists(), name


def test_out_of_band_buffers_are_a_clear_error(tmp_path):
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps(np.zeros(3), protocol=5, buffer_callback=lambda buffer: False))
    with pytest.raises(CondnetError, match="refused to unpickle.*out-of-band"):
        load_pickle(path)


def test_class_list_errors(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("3\nfoo\n")
    with pytest.raises(CondnetError, match="c.txt:2: expected a 1-based class label"):
        sources.read_class_list(path)
    path.write_text("3\n0\n")  # labels start at 1: 0 is no class
    with pytest.raises(CondnetError, match="c.txt:2: expected a 1-based class label, got '0'"):
        sources.read_class_list(path)
    root = write_imagenet64(tmp_path / "in64")
    path.write_text("1\n42\n")
    with pytest.raises(CondnetError, match="class 42 has no training images"):
        sources.read_imagenet64(root, path)


@pytest.mark.parametrize("python2", [True, False])
@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_pixel_exact(tmp_path, num_classes, python2):
    """Pickled by Python 2, as the real files are (byte strings that only latin1 decodes), and
    by Python 3."""
    write_cifar(tmp_path, num_classes, python2)
    source = f"cifar{num_classes}"
    train, val = load_splits(data_cfg(source=source, root=str(tmp_path)), 0)
    assert train.class_names == [f"c{i}" for i in range(num_classes)]
    folder = next(tmp_path.glob("cifar-*"))
    train_files = ["train"] if num_classes == 100 else [f"data_batch_{i}" for i in range(1, 6)]
    test_files = ["test"] if num_classes == 100 else ["test_batch"]
    for split, names in ((train, train_files), (val, test_files)):
        rows, labels = raw_batches([folder / name for name in names])
        assert np.array_equal(split.labels, labels)
        assert np.array_equal(split.images, pixels(rows, 32))


@pytest.fixture
def fake_cifar_download(monkeypatch):
    """Replaces the network: a download writes `batches` (name -> batch) into the CIFAR-10
    folder; returns the list of fetched URLs."""
    import torchvision.datasets as tvd

    fetched, batches = [], {}

    def download(url, root, *args, **kwargs):
        fetched.append(url)
        folder = write_cifar(Path(root)) / "cifar-10-batches-py"
        for name, batch in batches.items():
            (folder / name).write_bytes(pickle.dumps(batch, protocol=2))

    for module in (tvd.utils, tvd.cifar):  # wherever the code looks it up
        monkeypatch.setattr(module, "download_and_extract_archive", download, raising=False)
    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: bool(fetched))  # no MD5
    return fetched, batches


def test_cifar_download_is_read_like_a_local_folder(tmp_path, fake_cifar_download):
    fetched, _ = fake_cifar_download
    train, val = load_splits(data_cfg(source="cifar10", root=str(tmp_path), download=True), 0)
    assert len(train) == 30 and len(val) == 6 and fetched == [CIFAR10_URL]
    load_splits(data_cfg(source="cifar10", root=str(tmp_path), download=True), 0)
    assert len(fetched) == 1  # present now: not fetched again


def test_cifar_download_refuses_code_in_pickles(tmp_path, fake_cifar_download):
    _, batches = fake_cifar_download
    marker = tmp_path / "code-ran"
    batches["data_batch_1"] = {"data": Call(os.system, f"touch {marker}"), "labels": [1]}
    with pytest.raises(CondnetError, match="data_batch_1: refused to unpickle"):
        load_splits(data_cfg(source="cifar10", root=str(tmp_path / "data"), download=True), 0)
    assert not marker.exists()


def test_cifar_download_without_a_network_is_one_line(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets as tvd

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(tvd.utils, "download_and_extract_archive", offline)
    with pytest.raises(CondnetError, match="data.download: cannot fetch .*name resolution"):
        load_splits(data_cfg(source="cifar10", root=str(tmp_path), download=True), 0)


def test_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 10)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    train, val = load_splits(data_cfg(source="fashion-mnist", root=str(tmp_path)), 0)
    assert train.images.shape == (20, 28, 28, 1) and len(val) == 10
    image, _ = make_datasets(
        data_cfg(resize=28, crop=28, mean=[0.5] * 3, std=[0.5] * 3), train, val
    )[1][0]
    assert image.shape == (3, 28, 28) and torch.equal(image[0], image[1])  # gray -> 3 channels


def test_real_fashion_mnist():
    train, val = load_splits(data_cfg(source="fashion-mnist"), 0)
    assert len(train) == 60000 and len(val) == 10000
    assert train.class_names[9] == "Ankle boot" and np.bincount(val.labels).tolist() == [1000] * 10


def test_subset_is_class_balanced_and_seeded():
    train, _ = sources.make_synthetic(400, 4, 8, seed=0)
    part = subset(train, 40, seed=3)
    assert np.bincount(part.labels).tolist() == [10, 10, 10, 10]
    assert np.array_equal(part.labels, subset(train, 40, seed=3).labels)


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(CondnetError, match="no class folders; expected"):
        load_splits(data_cfg(source="imagefolder", root=str(tmp_path)), 0)
    with pytest.raises(CondnetError, match="data folder not found"):
        load_splits(data_cfg(source="imagefolder", root=str(tmp_path / "nowhere")), 0)
    with pytest.raises(CondnetError, match="not found; install Debian's dataset-fashion-mnist"):
        load_splits(data_cfg(source="fashion-mnist", root=str(tmp_path)), 0)


def test_prepare_imagenet(tmp_path, capsys):
    from PIL import Image

    from condnet.cli import main

    src = write_imagefolder(tmp_path / "full", classes=("n01", "n02", "n03"), per_class=2)
    (src / "train" / "n01" / "broken.JPEG").write_bytes(b"not a jpeg")
    (tmp_path / "classes.txt").write_text("# two of three\nn03\nn01\n")
    args = [
        "data",
        "prepare-imagenet",
        str(src),
        str(tmp_path / "small"),
        "--classes",
        str(tmp_path / "classes.txt"),
        "--workers",
        "2",
    ]
    assert main(args) == 1  # one unreadable source file
    out = capsys.readouterr()
    assert "written 8, already there 0, failed 1" in out.out and out.err.count("broken.JPEG") == 1
    written = sorted((tmp_path / "small").rglob("*.png"))
    assert len(written) == 8 and not (tmp_path / "small" / "train" / "n02").exists()
    assert all(min(Image.open(p).size) == 64 for p in written)
    assert main(args) == 1
    assert "written 0, already there 8" in capsys.readouterr().out
    train, _ = load_splits(data_cfg(source="imagefolder", root=str(tmp_path / "small")), 0)
    assert train.class_names == ["n01", "n03"]


def test_pickle_reader_closes_its_file(tmp_path):
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({"data": np.zeros((2, 3), np.uint8), "labels": [1, 2]}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_pickle(path)["labels"] == [1, 2]
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def layout_error(tmp_path, capsys, make) -> str:
    root = write_imagefolder(tmp_path / "data")
    make(root)
    assert main(["train", "--out", str(tmp_path / "run"), "--set", f"data.root={root}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and not (tmp_path / "run").exists()
    return err


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda r: (r / "train" / "empty").mkdir(), "empty class folder"),
        (
            lambda r: (
                (r / "val" / "zebra").mkdir()
                or (r / "val" / "cat" / "0.png").rename(r / "val" / "zebra" / "0.png")
            ),
            "class 'zebra' is not in",
        ),
        (lambda r: (r / "train" / "stray.jpg").write_bytes(b"x"), "files at the top"),
        (lambda r: __import__("shutil").rmtree(r / "val"), "validation folder not found"),
        (lambda r: [p.unlink() for p in (r / "train").rglob("*.*")], "empty class folder"),
    ],
)
def test_bad_layout_is_one_line(tmp_path, capsys, make, message):
    assert message in layout_error(tmp_path, capsys, make)


def test_no_images_at_all(tmp_path, capsys):
    (tmp_path / "data" / "train").mkdir(parents=True)
    (tmp_path / "data" / "val").mkdir()
    assert (
        main(["train", "--out", str(tmp_path / "run"), "--set", f"data.root={tmp_path / 'data'}"])
        == 2
    )
    assert "no class folders" in capsys.readouterr().err


def test_class_list_naming_unknown_classes(tmp_path, capsys):
    from tests.helpers import write_imagenet64

    root = write_imagenet64(tmp_path / "in64")
    (tmp_path / "c.txt").write_text("2\n999\n")
    args = [
        "train",
        "--out",
        str(tmp_path / "run"),
        "--set",
        "data.source=imagenet64",
        f"data.root={root}",
        f"data.classes={tmp_path / 'c.txt'}",
    ]
    assert main(args) == 2
    assert "class 999 has no training images" in capsys.readouterr().err


def test_a_plain_folder_of_class_folders_trains_with_a_held_out_share(tmp_path, capsys):
    root = plain_folder(tmp_path)
    cfg = image_config(root, **{"data.val_fraction": 0.2, "train.batch_size": 8})
    train_split, val_split = load_splits(cfg.data, cfg.run.seed)
    assert np.bincount(val_split.labels).tolist() == [2, 2, 2]  # 20 % of each class
    assert not set(train_split.images) & set(val_split.images) and len(train_split) == 24
    again = load_splits(cfg.data, cfg.run.seed)[1]
    assert again.images == val_split.images  # the same files for the same folder and seed
    out = tmp_path / "run"
    sets = [f"data.root={root}", "data.source=imagefolder", "data.resize=20", "data.crop=16"]
    sets += ["train.epochs=1", "train.warmup_epochs=0", "train.batch_size=8"]
    assert main(["train", "--out", str(out), "--set", *sets, "model.overrides.widths=8"]) == 0
    assert read_metrics(out)[0]["val_images"] == 3  # the default 10 %, one image per class
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["val_fraction"] == 0.1
