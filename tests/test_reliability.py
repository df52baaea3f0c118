"""Bad input gets a clear error, faults lose nothing, nothing untrusted runs (the README's
promises about data, faults and untrusted files)."""

import errno
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from condnet.cli import main
from condnet.config import load_config
from condnet.data import cache as cache_module
from condnet.data.cache import load_cached
from condnet.data.images import BadImage, load_rgb
from condnet.engine import checkpoint as ckpt_module
from condnet.engine.checkpoint import load_checkpoint, save_checkpoint
from condnet.engine.evaluation import evaluate_checkpoint
from condnet.engine.metrics import read_metrics
from condnet.engine.trainer import resume_config, train
from condnet.errors import CondnetError
from tests.helpers import png_declaring, tiny_array_split, tiny_config, write_imagefolder

ROOT = Path(__file__).resolve().parents[1]


# --- images -----------------------------------------------------------------------------------


def write_odd_images(folder: Path) -> list[Path]:
    """Valid images in every awkward mode; returns their paths."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))
    files = {
        "alpha.png": rgb.convert("RGBA"),
        "palette.png": rgb.convert("P"),
        "cmyk.jpg": rgb.convert("CMYK"),
        "gray.png": rgb.convert("L"),
        "tiny.png": rgb.resize((10, 10)),
        "deep.png": Image.fromarray((rng.integers(0, 65535, (30, 40))).astype(np.uint16)),
        "photo.webp": rgb,
        "photo.bmp": rgb,
    }
    for name, img in files.items():
        img.save(folder / name)
    return [folder / n for n in files]


def write_bad_images(folder: Path) -> list[Path]:
    good = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(good, format="JPEG")
    (folder / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image\n")
    png_declaring(folder / "bomb.png", 100_000, 100_000)
    return [folder / n for n in ("truncated.jpg", "empty.jpg", "text.jpg", "bomb.png")]


def test_odd_images_decode_to_rgb(tmp_path):
    """Every mode decodes (each is checked pixel for pixel in test_images.py)."""
    for path in write_odd_images(tmp_path):
        img = load_rgb(path)
        assert img.mode == "RGB" and min(img.size) >= 10, path.name


def test_bad_images_are_named(tmp_path):
    for path in write_bad_images(tmp_path):
        with pytest.raises(BadImage, match=path.name):
            load_rgb(path)


def folder_with_bad_files(tmp_path: Path) -> Path:
    root = write_imagefolder(tmp_path / "data", per_class=6)
    write_odd_images(root / "train" / "cat")
    write_bad_images(root / "train" / "dog")
    return root


def image_config(root: Path, **overrides):
    return tiny_config(
        **{
            "data.source": "imagefolder",
            "data.root": str(root),
            "data.resize": 20,
            "train.epochs": 1,
            **overrides,
        }
    )


def test_training_skips_unreadable_images_with_one_line_each(tmp_path, capfd):
    root = folder_with_bad_files(tmp_path)
    metrics = train(image_config(root), tmp_path / "run", progress=False)
    err = capfd.readouterr().err
    for name in ("truncated.jpg", "empty.jpg", "text.jpg", "bomb.png"):
        assert sum(name in line for line in err.splitlines()) == 1, name
    assert "skipped 4 unreadable images" in err and "Traceback" not in err
    assert metrics[0]["skipped_images"] == 4


def test_on_bad_image_error_stops_with_one_line(tmp_path, capfd):
    root = folder_with_bad_files(tmp_path)
    cfg = image_config(root, **{"data.on_bad_image": "error"})
    cfg.save(tmp_path / "cfg.yaml")
    assert (
        main(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "run")]) == 2
    )
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.on_bad_image=error" in err[0] and "Traceback" not in err[0]


@pytest.mark.parametrize("pipeline", ["torchvision", "tensor"])
def test_evaluation_honours_on_bad_image_error(tmp_path, pipeline):
    root = write_imagefolder(tmp_path / "data", per_class=6)
    write_bad_images(root / "val" / "dog")  # training reads only good files
    settings = {"data.pipeline": pipeline, "data.cache": str(tmp_path / "cache")}
    train(image_config(root, **settings), tmp_path / "run", progress=False)  # skips them
    error = {**settings, "data.on_bad_image": "error"}
    with pytest.raises(CondnetError, match="val/dog/.*data.on_bad_image=error"):
        evaluate_checkpoint(tmp_path / "run" / "last.pt", error)
    with pytest.raises(CondnetError, match="val/dog/.*data.on_bad_image=error"):
        train(image_config(root, **error), tmp_path / "strict", progress=False)
    assert read_metrics(tmp_path / "strict") == []  # no epoch was recorded


# --- data layout and class lists --------------------------------------------------------------


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


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "setting, key",
    [
        ("train.nonsense=1", "train.nonsense"),
        ("train.epochs=three", "train.epochs"),
        ("train.lr_peak=-0.5", "train.lr_peak"),
        ("train.epochs=0", "train.epochs"),
        ("model.overrides.num_experts=0", "num_experts"),
        ("data.crop=99", "data.crop"),
        ("train.batch_size=0", "train.batch_size"),
    ],
)
def test_bad_settings_exit_2_and_write_nothing(tmp_path, capsys, setting, key):
    assert main(["train", "--out", str(tmp_path / "run"), "--set", setting]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and key in err and not (tmp_path / "run").exists()


# --- checkpoints ------------------------------------------------------------------------------


def small_run(tmp_path: Path, **overrides) -> Path:
    train(tiny_config(**{"train.epochs": 1, **overrides}), tmp_path / "run", progress=False)
    return tmp_path / "run"


def test_bad_checkpoints_are_clear_errors(tmp_path, capsys):
    run = small_run(tmp_path)
    data = (run / "last.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "other.pt").write_text("weights? no, a text file\n")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "foreign.pt")
    for name, message in (
        ("truncated.pt", "not a readable checkpoint"),
        ("other.pt", "not a readable checkpoint"),
        ("foreign.pt", "not a condnet checkpoint"),
        ("missing.pt", "not found"),
    ):
        assert main(["evaluate", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, name


def test_checkpoint_for_another_network_or_class_count(tmp_path, capsys):
    run = small_run(tmp_path)
    assert (
        main(["train", "--resume", str(run), "--set", "model.name=paper-se", "train.epochs=2"]) == 2
    )
    assert "model.name: cannot change on resume" in capsys.readouterr().err
    assert main(["evaluate", str(run / "last.pt"), "--set", "data.synthetic_classes=7"]) == 2
    assert "the data has 7 classes, the checkpoint 4" in capsys.readouterr().err


def test_pickle_that_runs_code_is_refused(tmp_path, capsys):
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": Payload(), "model_spec": {}, "class_names": []}, tmp_path / "evil.pt")
    assert main(["evaluate", str(tmp_path / "evil.pt")]) == 2
    assert "refused to load" in capsys.readouterr().err
    with pytest.raises(CondnetError, match="refused"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CondnetError):
        load_checkpoint(tmp_path / "plain.pkl")
    assert not marker.exists()


# --- faults -----------------------------------------------------------------------------------


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}, "model_spec": {}, "class_names": []}, path)

    def full_disk(obj, f):
        f.write(b"partial data")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_module.torch, "save", full_disk)
    with pytest.raises(OSError):
        save_checkpoint({"model": {"w": torch.zeros(3)}, "model_spec": {}, "class_names": []}, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def test_full_disk_keeps_the_previous_config(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    tiny_config(**{"train.epochs": 3}).save(path)
    real_write_text = Path.write_text

    def full_disk(self, text, *args, **kwargs):
        real_write_text(self, text[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError):
        tiny_config(**{"train.epochs": 5}).save(path)
    monkeypatch.undo()
    assert load_config(path).train.epochs == 3
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # no temporary left behind


def test_full_disk_during_training_is_one_clear_error(tmp_path, monkeypatch):
    run = small_run(tmp_path, **{"train.epochs": 2})
    before = load_checkpoint(run / "last.pt")["epoch"]
    monkeypatch.setattr(
        ckpt_module.torch,
        "save",
        lambda obj, f: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")),
    )
    cfg = resume_config(run, {"train.epochs": 3})
    with pytest.raises(
        CondnetError, match="No space left on device.*previous checkpoint is intact"
    ):
        train(cfg, run, resume=True, progress=False)
    monkeypatch.undo()
    assert load_checkpoint(run / "last.pt")["epoch"] == before


def test_a_signal_stops_training_after_the_current_step(tmp_path, monkeypatch, capsys):
    """SIGINT arrives during the optimizer step of step 3 of epoch 2: that step finishes, the
    next one never starts, and last.pt holds epoch 1."""
    from condnet.engine import trainer

    steps, make_optimizer = [], trainer.make_optimizer

    def counting(*args, **kwargs):
        optimizer = make_optimizer(*args, **kwargs)
        optimizer.register_step_pre_hook(
            lambda *_: os.kill(os.getpid(), signal.SIGINT) if len(steps) == 6 + 2 else None
        )
        optimizer.register_step_post_hook(lambda *_: steps.append(1))
        return optimizer

    monkeypatch.setattr(trainer, "make_optimizer", counting)
    with pytest.raises(trainer.Interrupted):
        train(tiny_config(), tmp_path / "run", progress=False)  # 6 steps an epoch
    assert len(steps) == 6 + 3
    assert "SIGINT: stopped before step 4 of epoch 2; " in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = tiny_config(**{"train.lr_start": 1e30, "train.lr_peak": 1e30, "train.epochs": 2})
    with pytest.raises(CondnetError, match="training loss became (nan|inf)"):
        train(cfg, tmp_path / "run", progress=False)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["epoch"] == -1 and all(
        torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()
    )


# --- the tensor pipeline's cache --------------------------------------------------------------


def counting_builds(monkeypatch) -> list:
    builds, real = [], cache_module._build
    monkeypatch.setattr(cache_module, "_build", lambda *a: builds.append(1) or real(*a))
    return builds


def failing_at(call: int, fault: BaseException, real):
    """`real`, except that its `call`-th call raises `fault`."""
    calls = []

    def fake(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise fault
        return real(*args, **kwargs)

    return fake


FULL_DISK = OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize(
    "owner, name, call, fault",
    [
        (os, "posix_fallocate", 1, FULL_DISK),  # the images' file cannot be allocated
        (cache_module, "_on_canvas", 5, FULL_DISK),  # a write fails half-way
        (cache_module, "_save_npy", 2, FULL_DISK),  # after the images, before the manifest
        (cache_module, "_on_canvas", 5, KeyboardInterrupt()),  # Ctrl-C half-way
    ],
)
def test_cache_build_stopped_is_never_taken_as_complete(
    tmp_path, monkeypatch, owner, name, call, fault
):
    split, folder = tiny_array_split(), tmp_path / "cache"
    monkeypatch.setattr(owner, name, failing_at(call, fault, getattr(owner, name)))
    with pytest.raises((CondnetError, KeyboardInterrupt)) as stopped:
        load_cached(split, folder, 16, 16)
    assert isinstance(stopped.value, type(fault)) or f"{folder}: cannot write" in str(stopped.value)
    monkeypatch.undo()
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    builds = counting_builds(monkeypatch)
    cached = load_cached(split, folder, 16, 16)
    assert builds == [1] and np.array_equal(cached.images, split.images)


KILLED_BUILD = """
import sys, time
from pathlib import Path
from condnet.data import cache
from tests.helpers import tiny_array_split

def stuck(*args, **kwargs):
    print("building", flush=True)
    time.sleep(60)  # killed here

setattr(cache, sys.argv[2], stuck)
cache.load_cached(tiny_array_split(), Path(sys.argv[1]), 16, 16)
"""


@pytest.mark.parametrize("stage", ["_on_canvas", "_save_npy"])  # decoding; images.npy written
def test_cache_build_killed_is_rebuilt_and_cleaned(tmp_path, monkeypatch, stage):
    folder = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_BUILD, str(folder), stage],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout.readline() == b"building\n"
    proc.kill()
    proc.wait()
    builds = counting_builds(monkeypatch)
    cached = load_cached(tiny_array_split(), folder, 16, 16)
    assert builds == [1] and np.array_equal(cached.images, tiny_array_split().images)
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]  # the killed one's


def test_cache_with_a_torn_file_is_rebuilt(tmp_path, monkeypatch):
    split, folder = tiny_array_split(), tmp_path / "cache"
    load_cached(split, folder, 16, 16)
    data = (folder / "images.npy").read_bytes()
    (folder / "images.npy").write_bytes(data[: len(data) // 2])  # e.g. a copy cut short
    builds = counting_builds(monkeypatch)
    assert np.array_equal(load_cached(split, folder, 16, 16).images, split.images) and builds == [1]


SAVE_LOOP = """
import sys, torch
from condnet.engine.checkpoint import save_checkpoint
i = 0
while True:
    state = {"model": {"w": torch.full((400_000,), float(i))}, "model_spec": {}}
    save_checkpoint({**state, "class_names": [str(i)]}, sys.argv[1])
    i += 1
    print(i, flush=True)
"""


def test_kill_9_during_saves_never_leaves_an_unreadable_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    for delay in (0.3, 0.45, 0.6):
        proc = subprocess.Popen(
            [sys.executable, "-c", SAVE_LOOP, str(path)], stdout=subprocess.PIPE
        )
        proc.stdout.readline()  # at least one save finished
        time.sleep(delay)
        proc.kill()
        proc.wait()
        state = load_checkpoint(path)
        assert torch.equal(
            state["model"]["w"], torch.full((400_000,), float(state["class_names"][0]))
        )


def run_cli(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "condnet.cli", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_epochs(run: Path, count: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").exists() and len(
            (run / "metrics.jsonl").read_text().splitlines()
        ) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"run did not reach {count} epochs")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    cfg = tiny_config(**{"train.epochs": 4, "data.synthetic_images": 320})
    cfg.save(folder / "cfg.yaml")
    train(cfg, folder / "full", progress=False)
    return folder


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "SIGKILL"])
def test_interrupted_run_resumes_bit_identical(tmp_path, uninterrupted, how):
    run = tmp_path / "run"
    proc = run_cli(["train", "--config", str(uninterrupted / "cfg.yaml"), "--out", str(run)])
    wait_for_epochs(run, 1, proc)
    time.sleep(0.3)  # somewhere inside the next epoch
    proc.send_signal(getattr(signal, how))
    _, err = proc.communicate(timeout=60)
    if how == "SIGKILL":
        assert proc.returncode == -9
    else:
        assert proc.returncode == 128 + getattr(signal, how), err
        assert "continue with: condnet train --resume" in err and "Traceback" not in err
    assert load_checkpoint(run / "last.pt")["epoch"] >= 0
    proc = run_cli(["train", "--resume", str(run)])
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    full, resumed = (
        load_checkpoint(uninterrupted / "full" / "last.pt"),
        load_checkpoint(run / "last.pt"),
    )
    assert all(torch.equal(full["model"][k], resumed["model"][k]) for k in full["model"])
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [
        0,
        1,
        2,
        3,
    ]
