"""The tensor pipeline's uint8 cache (`condnet.data.cache`) and `condnet data cache`."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from condnet.config import load_config
from condnet.data import cache as cache_module
from condnet.data.cache import cache_folder, load_cached, long_side
from condnet.data.datasets import load_splits
from condnet.data.sources import Split
from condnet.errors import CondnetError
from tests.helpers import array_split, tiny_array_split, tiny_config, write_imagefolder

ROOT = Path(__file__).resolve().parents[1]


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


def test_data_cache_command_builds_what_a_run_then_reuses(tmp_path, capsys):
    from condnet.cli import main
    from condnet.commands.common import parse_assignments

    sets = [
        "data.source=synthetic",
        "data.synthetic_images=24",
        "data.synthetic_size=64",
        f"data.cache={tmp_path}",
        "data.pipeline=tensor",
    ]
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


def test_a_waiting_process_reads_the_cache_once_another_has_built_it(tmp_path, monkeypatch):
    """DDP ranks other than 0 poll the folder until the builder's manifest is in place."""
    from condnet.data.cache import wait_for_cache

    split, folder, polls = array_split(count=8), tmp_path / "c", []

    def sleep(seconds):  # each poll: the builder finishes after the second
        polls.append(seconds)
        if len(polls) == 2:
            load_cached(split, folder, 64, 56)

    monkeypatch.setattr(cache_module.time, "sleep", sleep)
    cached = wait_for_cache(split, folder, 64, 56)
    assert len(polls) == 2 and np.array_equal(cached.images, split.images)


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
