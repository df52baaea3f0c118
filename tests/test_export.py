"""ONNX export (BN folded, dynamic batch) against PyTorch, and safetensors weights files."""

import json
import sys

import onnx
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import condnet
from condnet.cli import main
from condnet.data.transform_spec import TransformSpec
from condnet.deploy.bundle import Bundle
from condnet.deploy.export import OnnxClassifier, check_onnx, export_onnx, require
from condnet.deploy.model_file import read_bundle
from condnet.deploy.weights import save_weights
from condnet.engine.checkpoint import checkpoint_state, save_checkpoint
from condnet.errors import CondnetError
from condnet.models.layout import channels_last_weights
from tests.deploy_helpers import (
    CLASS_NAMES,
    EVAL_TRANSFORM,
    small_model,
    trained_like,
    write_checkpoint,
)


@pytest.mark.parametrize("name", condnet.list_models())
def test_paper_presets_in_onnx_runtime_match_pytorch(name, tmp_path):
    model = trained_like(condnet.build_model(name), resolution=56, logit_spread=0.25)
    path = tmp_path / "model.onnx"
    export_onnx(Bundle(model, [f"class {i}" for i in range(100)], TransformSpec()), path)
    differences = check_onnx(path, model, batches=(1, 7))
    assert set(differences) == {1, 7} and max(differences.values()) <= 1e-4
    graph = onnx.load(str(path)).graph
    assert "BatchNormalization" not in {node.op_type for node in graph.node}
    batch_axis = graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_axis.dim_param == "batch" and not batch_axis.HasField("dim_value")


def test_channels_last_condconv_exports_at_batch_1_7_64(tmp_path):
    # channels_last weights: the stem's output is channels_last, so the trace takes the 1x1
    # CondConvs' row products; the graph must still hold for every batch size.
    model = channels_last_weights(small_model("condconv"))
    path = tmp_path / "model.onnx"
    export_onnx(Bundle(model, CLASS_NAMES, TransformSpec.from_dict(EVAL_TRANSFORM)), path)
    differences = check_onnx(path, model, batches=(1, 7, 64))
    assert set(differences) == {1, 7, 64} and max(differences.values()) <= 1e-4


def test_export_check_cli_at_batch_1_7_64(tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "last.pt", small_model("condconv"), EVAL_TRANSFORM)
    onnx_file, weights = tmp_path / "m.onnx", tmp_path / "m.safetensors"
    args = ["--onnx", str(onnx_file), "--weights", str(weights), "--check"]
    assert main(["export", str(ckpt), *args]) == 0
    out = capsys.readouterr().out
    assert "batch 1:" in out and "batch 7:" in out and "batch 64:" in out and "; ok" in out
    classifier = OnnxClassifier(onnx_file)
    assert classifier.class_names == CLASS_NAMES
    assert classifier.transform == TransformSpec.from_dict(EVAL_TRANSFORM)
    assert classifier(torch.randn(64, 3, 32, 32)).shape == (64, len(CLASS_NAMES))


def test_check_fails_when_the_export_is_wrong(tmp_path, capsys, monkeypatch):
    ckpt = write_checkpoint(tmp_path / "last.pt", small_model("se"), EVAL_TRANSFORM)

    def forget_batch_norm(model):  # a folding bug: BN dropped instead of folded
        model = condnet.fuse(model)
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.bias = None
        return model

    monkeypatch.setattr("condnet.deploy.export.fuse", forget_batch_norm)
    assert main(["export", str(ckpt), "--onnx", str(tmp_path / "m.onnx"), "--check"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_weights_round_trip(tmp_path):
    model = small_model("condconv", routing="conv")
    ckpt = write_checkpoint(tmp_path / "last.pt", model, EVAL_TRANSFORM)
    weights = tmp_path / "model.safetensors"
    assert main(["export", str(ckpt), "--weights", str(weights)]) == 0
    loaded = condnet.load_pretrained(weights)
    assert loaded.spec == model.spec and not loaded.training
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    with safe_open(weights, framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert keys == set(model.state_dict())  # unfused: training can resume from it
    assert condnet.NetSpec.from_dict(json.loads(meta["condnet.model_spec"])) == model.spec
    assert json.loads(meta["condnet.class_names"]) == CLASS_NAMES
    assert json.loads(meta["condnet.eval_transform"]) == EVAL_TRANSFORM
    assert meta["condnet.version"] == condnet.__version__


def test_missing_eval_transform_takes_the_paper_default(tmp_path):
    ckpt = write_checkpoint(tmp_path / "last.pt", small_model("standard"))
    weights = tmp_path / "w.safetensors"
    save_weights(read_bundle(ckpt), weights)
    transform = read_bundle(weights).transform
    assert (transform.resize, transform.crop) == (64, 56)
    assert transform.mean == (0.485, 0.456, 0.406) and transform.std == (0.229, 0.224, 0.225)


def test_unreadable_weights_are_one_line_errors(tmp_path):
    text = tmp_path / "text.safetensors"
    text.write_text("not weights")
    with pytest.raises(CondnetError, match="not a readable safetensors file"):
        condnet.load_pretrained(text)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(CondnetError, match="not a condnet file"):
        condnet.load_pretrained(plain)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"class_names": "abcdefg"}, "class_names: expected a list of strings"),
        ({"class_names": ["a", "b"]}, "class_names: 2 names for a model with 7 classes"),
        ({"eval_transform": {"crop": 0}}, "eval_transform.crop: expected a positive integer"),
        ({"eval_transform": {"mean": 0.5}}, "eval_transform.mean: expected a list"),
        ({"eval_transform": {"size": 3}}, "eval_transform: unknown key 'size'"),
    ],
)
def test_bad_checkpoint_metadata_is_a_clear_error(tmp_path, change, message):
    state = checkpoint_state(small_model("standard"), CLASS_NAMES)
    save_checkpoint(state | change, tmp_path / "last.pt")
    with pytest.raises(CondnetError, match=message):
        read_bundle(tmp_path / "last.pt")


def test_writing_into_a_missing_folder_is_a_clear_error(tmp_path):
    bundle = read_bundle(write_checkpoint(tmp_path / "last.pt", small_model("standard")))
    with pytest.raises(CondnetError, match="no such folder"):
        save_weights(bundle, tmp_path / "missing" / "w.safetensors")
    with pytest.raises(CondnetError, match="no such folder"):
        export_onnx(bundle, tmp_path / "missing" / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "nothing to export"),
        (["--check", "--weights", "w.safetensors"], "--check compares an ONNX export"),
        (["--weights", "w.bin"], "expected a file name ending in .safetensors"),
        (["--onnx", "m.onnx", "--opset", "11"], "--opset: expected 17 to 20"),
    ],
)
def test_export_usage_errors(tmp_path, capsys, args, message):
    ckpt = write_checkpoint(tmp_path / "last.pt", small_model("standard"))
    assert main(["export", str(ckpt), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_missing_onnxruntime_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(CondnetError, match=r"pip install condnet\[deploy\]"):
        require("onnxruntime")
