"""The checkpoint schema: the builder's keys, the format version, rebuilding the model; what
training writes; bad, foreign and code-running files; saves that fail or are killed."""

import errno
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from condnet.cli import main
from condnet.engine import checkpoint as ckpt_module
from condnet.engine.checkpoint import (
    FORMAT_KEY,
    FORMAT_VERSION,
    checkpoint_state,
    load_checkpoint,
    model_from_checkpoint,
    rebuild_model,
    save_checkpoint,
)
from condnet.engine.evaluation import evaluate_checkpoint
from condnet.engine.trainer import train
from condnet.errors import CondnetError
from tests.deploy_helpers import CLASS_NAMES, small_model
from tests.helpers import LEARNS, small_run, tiny_config


def test_builder_writes_the_format_version_and_leaves_out_what_is_not_given(tmp_path):
    model = small_model("se")
    state = checkpoint_state(model, CLASS_NAMES, training={"epoch": 0})
    assert state[FORMAT_KEY] == FORMAT_VERSION
    assert {"model", "model_spec", "class_names", "epoch", "versions"} == set(state) - {FORMAT_KEY}
    save_checkpoint(state, tmp_path / "last.pt")
    rebuilt = model_from_checkpoint(load_checkpoint(tmp_path))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt(x), model(x))


def test_a_checkpoint_without_the_version_is_format_1_and_reads(tmp_path):
    state = checkpoint_state(small_model("standard"), CLASS_NAMES)
    del state[FORMAT_KEY]
    save_checkpoint(state, tmp_path / "old.pt")
    assert model_from_checkpoint(load_checkpoint(tmp_path / "old.pt")).num_classes == 7


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, "two"])
def test_an_unknown_format_version_is_a_one_line_error(tmp_path, version):
    state = checkpoint_state(small_model("standard"), CLASS_NAMES) | {FORMAT_KEY: version}
    save_checkpoint(state, tmp_path / "new.pt")
    with pytest.raises(CondnetError, match=f"unknown checkpoint {FORMAT_KEY} {version!r}") as err:
        load_checkpoint(tmp_path / "new.pt")
    assert "\n" not in str(err.value)


def test_weights_that_do_not_fit_the_spec_are_one_line_errors():
    model = small_model("standard")
    weights = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier")}
    with pytest.raises(
        CondnetError,
        match="^file.pt: weights do not fit: Error.s. in loading state_dict for CondNet:$",
    ):
        rebuild_model(model.spec, weights, "file.pt: weights do not fit")


def test_checkpoint_contents_and_evaluate_matches_log(tmp_path, capsys):
    metrics = train(tiny_config(**LEARNS), tmp_path, progress=False)
    top1 = [m["val_top1"] for m in metrics]
    best = max(range(3), key=top1.__getitem__)
    assert best > 0 and top1[best] > 40  # learnt after the first epoch, far above chance (12.5)
    assert any(m["val_top1"] < m["val_top5"] < 100 for m in metrics)  # top-5 of 8 classes
    state = load_checkpoint(tmp_path / "last.pt")
    assert {
        "model",
        "optimizer",
        "epoch",
        "rng",
        "config",
        "class_names",
        "metrics",
        "versions",
    } <= set(state)
    assert state["epoch"] == 3 and len(state["metrics"]) == 3  # epochs finished
    for name, epoch in (("last.pt", 2), ("best.pt", best)):
        result = evaluate_checkpoint(tmp_path / name)
        assert result["epoch"] == epoch + 1  # counted from 1, as the log and the text say
        assert result["count"] == metrics[epoch]["val_images"] == 64
        assert result["top1"] == pytest.approx(metrics[epoch]["val_top1"])
        assert result["top5"] == pytest.approx(metrics[epoch]["val_top5"])
        assert result["loss"] == pytest.approx(metrics[epoch]["val_loss"], rel=1e-5)
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "last.pt"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["epoch"] == 3  # the text says "epoch 3" too
    assert result["top5"] == pytest.approx(metrics[2]["val_top5"]) and result["precision"] == "fp32"
    assert main(["evaluate", str(tmp_path / "last.pt")]) == 0
    assert f"images of 8 classes, fp32 on {result['device']})" in capsys.readouterr().out


def test_best_checkpoint_is_the_first_epoch_with_the_best_top1(tmp_path, monkeypatch):
    from condnet.engine import trainer

    scores, real = iter([30.0, 60.0, 60.0]), trainer.evaluate
    monkeypatch.setattr(trainer, "evaluate", lambda *a, **k: real(*a, **k) | {"top1": next(scores)})
    train(tiny_config(), tmp_path, progress=False)
    best, last = load_checkpoint(tmp_path / "best.pt"), load_checkpoint(tmp_path / "last.pt")
    assert (best["epoch"], best["best_top1"]) == (2, 60.0)
    assert (last["epoch"], last["best_top1"]) == (3, 60.0)


def test_bad_checkpoints_are_clear_errors(tmp_path, capsys):
    run = small_run(tmp_path)
    data = (run / "last.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "other.pt").write_text("weights? no, a text file\n")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "foreign.pt")
    for name, message in (
        ("truncated.pt", "not a readable checkpoint"),
        ("other.pt", "a text file, not a checkpoint"),
        ("foreign.pt", "not a condnet checkpoint"),
        ("missing.pt", "not found"),
    ):
        assert main(["evaluate", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, name


def wrong_files(folder: Path) -> dict[str, str]:
    """Files a newcomer passes as a checkpoint, each with what condnet should call it."""
    from PIL import Image

    from condnet.data.transform_spec import TransformSpec
    from condnet.deploy.bundle import Bundle
    from condnet.deploy.weights import save_weights

    (folder / "model.pt").write_text("epoch 3, loss 0.2\n")  # once: KeyError 101, a traceback
    (folder / "script.pt").write_text("import torch\nprint('hello')\n")
    Image.new("RGB", (8, 8)).save(folder / "photo.pt", format="PNG")
    model = small_model("standard")
    bundle = Bundle(model, CLASS_NAMES[: model.num_classes], TransformSpec(crop=16))
    save_weights(bundle, folder / "weights.pt")
    (folder / "model.onnx").write_bytes(b"\x08\x08\x12\x07pytorch\x1a\x032.0" + bytes(64))
    (folder / "random.pt").write_bytes(bytes(range(256)) * 4)
    return {
        "model.pt": "a text file, not a checkpoint",
        "script.pt": "a text file, not a checkpoint",
        "photo.pt": "an image, not a checkpoint",
        "weights.pt": "a safetensors weights file, not a checkpoint",
        "model.onnx": "an ONNX model, not a checkpoint: condnet predict runs it",
        "random.pt": "not a checkpoint (a file of unknown format)",
    }


def test_wrong_files_are_named_in_one_line_without_the_unsafe_loads_advice(tmp_path, capsys):
    for name, message in wrong_files(tmp_path).items():
        for command in (["evaluate"], ["export", "--onnx", str(tmp_path / "out.onnx")]):
            if name == "weights.pt":
                continue  # evaluate and export read weights, whatever their name: below
            assert main([*command[:1], str(tmp_path / name), *command[1:]]) == 2, name
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and message in err, (name, command[0], err)
            assert "weights_only" not in err and "Traceback" not in err
    assert main(["export", str(tmp_path / "weights.pt"), "--onnx", str(tmp_path / "w.onnx")]) == 0


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


def test_a_run_folder_means_its_best_checkpoint_unless_last_and_says_which(tmp_path, capsys):
    from condnet.engine import trainer

    scores, real = iter([30.0, 60.0, 50.0]), trainer.evaluate
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer, "evaluate", lambda *a, **k: real(*a, **k) | {"top1": next(scores)})
        train(tiny_config(), tmp_path / "run", progress=False)
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "run" / "best.pt") in out and "(epoch 2)" in out
    assert main(["evaluate", str(tmp_path / "run"), "--last", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["checkpoint"] == str(tmp_path / "run" / "last.pt") and result["epoch"] == 3


def test_evaluate_refuses_to_change_the_checkpoints_network(tmp_path, capsys):
    """`--set model.name=...` was silently ignored: the network is the checkpoint's."""
    run = small_run(tmp_path)
    assert main(["evaluate", str(run), "--set", "model.name=paper-se"]) == 2
    err = capsys.readouterr().err
    assert "--set model.name: evaluate uses the checkpoint's own network" in err


def test_a_checkpoint_counting_epochs_from_0_reads_counting_from_1(tmp_path):
    """Format 2 saved the last finished epoch's index and 0-based records; format 3 counts
    epochs from 1 (how many finished), and reads the old one the same way."""
    run = small_run(tmp_path)
    state = load_checkpoint(run / "last.pt")
    assert state[FORMAT_KEY] == 3 and state["epoch"] == 1 and state["metrics"][0]["epoch"] == 1
    old = state | {FORMAT_KEY: 2, "epoch": 0, "resumes": [{"epoch": 0, "changes": {}}]}
    old["metrics"] = [{**r, "epoch": 0} for r in state["metrics"]]
    save_checkpoint(old, tmp_path / "old.pt")
    read = load_checkpoint(tmp_path / "old.pt")
    assert read["epoch"] == 1 and [r["epoch"] for r in read["metrics"]] == [1]
    assert read["resumes"] == [{"epoch": 1, "changes": {}}]
