"""reproduce: three runs, resume-and-skip, and the report built from real (tiny) training."""

import json

import pytest
from PIL import Image

from condnet.cli import main
from condnet.config import load_config
from condnet.engine.checkpoint import load_checkpoint
from condnet.engine.trainer import train
from condnet.models import list_models
from condnet.report.build import build_report, table3_notes
from condnet.report.runs import find_runs
from condnet.reproduce import block_config, reproduce
from tests.helpers import tiny_config

MODELS = list_models(paper_order=True)


@pytest.fixture
def tiny_yaml(tmp_path):
    path = tmp_path / "tiny.yaml"
    tiny_config(**{"train.epochs": 2}).save(path)
    return path


def test_reproduce_trains_three_blocks_and_reports(tmp_path, tiny_yaml, capsys):
    out = tmp_path / "out"
    path, rows = reproduce(tiny_yaml, out, progress=False)
    assert [r["model"] for r in rows] == MODELS
    for name, row in zip(MODELS, rows, strict=False):
        metrics = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
        assert load_checkpoint(out / name / "last.pt")["config"]["model"]["name"] == name
        assert row["final_top1"] == metrics[-1]["val_top1"]
        assert row["best_top1"] == max(m["val_top1"] for m in metrics)
        assert row["train_seconds"] == pytest.approx(sum(m["epoch_seconds"] for m in metrics))
    report = path.read_text()
    for heading in (
        "## Table 3",
        "## Figure 5",
        "## Table 4",
        "### paper-condconv",
        "git commit",
        "seed: 0",
    ):
        assert heading in report
    assert "| paper-se | 2 |" in report and "74.04" in report and "not reported" in report
    assert "CondConv kernel mixing" in report  # condconv's complete account
    with Image.open(out / "figure5.png") as fig:
        assert fig.format == "PNG" and fig.width > 1000 and fig.height > 400
    # `condnet report` rebuilds the same tables without training.
    path.unlink()
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Table 3" in printed and "paper-condconv" in printed and path.exists()


def test_reproduce_resumes_unfinished_and_skips_finished(tmp_path, tiny_yaml, monkeypatch):
    out = tmp_path / "out"
    cfg = tiny_config(**{"train.epochs": 2})
    train(
        tiny_config(**{"train.epochs": 2, "model.name": "paper-standard"}),
        out / "paper-standard",
        progress=False,
    )
    train(
        tiny_config(**{"train.epochs": 2, "model.name": "paper-se"}),
        out / "paper-se",
        progress=False,
        stop_after=1,
    )
    finished = (out / "paper-standard" / "last.pt").stat().st_mtime_ns
    calls = []
    real_train = train

    def spy(cfg, folder, resume=False, **kw):
        calls.append((cfg.model.name, resume))
        return real_train(cfg, folder, resume=resume, **kw)

    monkeypatch.setattr("condnet.reproduce.train", spy)
    reproduce(tiny_yaml, out, progress=False)
    assert calls == [("paper-se", True), ("paper-condconv", False)]
    assert (out / "paper-standard" / "last.pt").stat().st_mtime_ns == finished
    epochs = [
        json.loads(x)["epoch"]
        for x in (out / "paper-se" / "metrics.jsonl").read_text().splitlines()
    ]
    assert epochs == [1, 2] and cfg.train.epochs == 2
    calls.clear()
    reproduce(tiny_yaml, out, progress=False)
    assert calls == []


def test_report_without_runs_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no finished runs" in capsys.readouterr().err


def test_report_notes_miniature_eval_subset_and_routing(tmp_path):
    overrides = {
        "train.epochs": 3,
        "train.epoch_eval_subset": 8,
        "train.routing_lr_scale": 0.5,
        "train.lr_per_step": True,
        "train.routing_init": "reference",
    }
    path = tmp_path / "tiny.yaml"
    tiny_config(**overrides).save(path)
    report, _ = reproduce(path, tmp_path / "out", progress=False)
    text = report.read_text()
    assert (
        "A miniature of the paper's recipe (synthetic; crop 16, resize 20, scale [0.5, 1.0], "
        "epochs 3, warmup_epochs 1, batch_size 32, lr_start 0.01, lr_peak 0.1, lr_final 0.001, "
        "lr_per_step True)" in text
    )
    assert "paper-condconv initialises its routers as the CondConv reference code" in text
    assert "autocast" not in text  # CPU runs: fp32, nothing to note
    runs = find_runs(tmp_path / "out", list_models(paper_order=True))
    runs[1].metrics[-1]["precision"] = "bf16 autocast"
    assert (
        "paper-se trained under bf16 autocast (run.amp on CUDA); the paper does not state its "
        "precision." in table3_notes(runs)
    )
    assert "fixed class-balanced subset of 8 validation images" in text and "(48 images)" in text
    assert (
        "paper-condconv trains block C unlike the paper's text: routing_lr_scale=0.5 "
        "(see the README's section on training block C)" in text
    )
    assert "paper-se trains block C" not in text
    metrics = [
        json.loads(x)
        for x in (tmp_path / "out" / "paper-se" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [m["val_images"] for m in metrics] == [8, 8, 48] and {
        m["train_images"] for m in metrics
    } == {192}


def test_reproduce_side_by_side_trains_each_block_in_its_own_process(tmp_path, tiny_yaml, capsys):
    out = tmp_path / "out"
    _, rows = reproduce(tiny_yaml, out, progress=False, jobs=3)
    printed = capsys.readouterr().out
    for name in MODELS:
        assert f"[{name}] epoch 2/2" in printed
        assert load_checkpoint(out / name / "last.pt")["epoch"] == 2
        # tiny_config sets one thread
        assert load_config(out / name / "config.yaml").run.threads == 1
    assert [r["model"] for r in rows] == MODELS and not list(out.glob(".*.yaml"))


def test_reproduce_side_by_side_names_a_failed_block(tmp_path, tiny_yaml, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "paper-se").write_text("a file where the run folder should be")
    assert main(["reproduce", "--config", str(tiny_yaml), "--out", str(out), "--jobs", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("condnet reproduce: error: training failed: paper-se (exit status ")
    assert load_checkpoint(out / "paper-condconv" / "last.pt")["epoch"] == 2  # the others ran


def test_precision_and_device_are_recorded_per_run(tmp_path):
    train(tiny_config(**{"train.epochs": 1}), tmp_path / "paper-standard", progress=False)
    record = json.loads((tmp_path / "paper-standard" / "metrics.jsonl").read_text())
    assert record["precision"] == "fp32" and record["device"].startswith("CPU: ")  # no CUDA here
    assert (
        load_checkpoint(tmp_path / "paper-standard" / "last.pt")["metrics"][0]["precision"]
        == "fp32"
    )
    path, _ = build_report(tmp_path, ["paper-standard"])
    report = path.read_text()
    assert f"| paper-standard | 1 | fp32 | {record['device']} |" in report
    assert f"- training of paper-standard: fp32 on {record['device']}" in report
    # A run from before precision was recorded says so.
    del record["precision"], record["device"]
    (tmp_path / "paper-standard" / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    report = build_report(tmp_path, ["paper-standard"])[0].read_text()
    assert "| paper-standard | 1 | unknown | unknown |" in report


def test_amp_off_on_cuda_is_exact_fp32(monkeypatch):
    import torch

    from condnet.config import RunConfig
    from condnet.engine.distributed import Dist
    from condnet.engine.runtime import Runtime, make_runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the flags, without a GPU
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark
    try:
        for amp in (True, False):
            rt = make_runtime(RunConfig(device="cuda", amp=amp))
            assert rt.amp is amp and torch.backends.cudnn.allow_tf32 is amp
            assert torch.backends.cuda.matmul.allow_tf32 is False
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved
    cpu = Runtime(torch.device("cpu"), Dist(rank=0, world=2), amp=True, channels_last=False)
    assert cpu.record()["precision"] == "bf16 autocast" and cpu.record()["device"].endswith(" x 2")


def test_a_shared_model_override_reaches_the_blocks_that_use_it():
    overrides = {"model.overrides.num_experts": 8, "model.overrides.widths": 8}
    standard = block_config({"model": {"overrides": {"se_ratio": 2}}}, overrides, "paper-standard")
    condconv = block_config({"model": {"overrides": {"se_ratio": 2}}}, overrides, "paper-condconv")
    assert standard.model.overrides == {"widths": 8}
    assert condconv.model.overrides == {"se_ratio": 2, "num_experts": 8, "widths": 8}
