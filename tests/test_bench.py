"""`condnet bench`, run tiny: the table's shape and arithmetic, never its timings."""

import functools
import json

import pytest
import torch

from condnet.cli import main

TINY = [
    "--set",
    "model.overrides.widths=8",
    "model.overrides.repeats=1",
    "model.overrides.head_channels=16",
    "--resolution",
    "16",
]


def test_json_has_every_backend_and_batch(capsys):
    args = [
        "bench",
        "--model",
        "paper-condconv",
        *TINY,
        "--batch",
        "1,3",
        "--iters",
        "2",
        "--warmup",
        "1",
        "--backend",
        "eager,fused,onnxruntime",
        "--json",
    ]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    pairs = [(r["backend"], r["batch"]) for r in result["results"]]
    assert pairs == [(b, n) for b in ("eager", "fused", "onnxruntime") for n in (1, 3)]
    for r in result["results"]:
        assert r["median_ms"] > 0
        assert r["images_per_s"] == pytest.approx(r["batch"] * 1000 / r["median_ms"])
    assert (result["model"], result["device"], result["iters"], result["warmup"]) == (
        "paper-condconv",
        "cpu",
        2,
        1,
    )


def test_text_table_with_compile(capsys, monkeypatch):
    # Inductor's C++ build takes minutes on a small CPU; the eager dynamo backend still runs
    # the model through torch.compile.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    assert (
        main(
            [
                "bench",
                "--model",
                "paper-standard",
                *TINY,
                "--batch",
                "2",
                "--iters",
                "1",
                "--warmup",
                "1",
                "--backend",
                "fused,compile",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert "median of 1 runs" in lines[0] and len(lines) == 4
    assert lines[1].split() == ["backend", "batch", "median", "ms", "images/s"]
    for line, name in zip(lines[2:], ("fused", "compile"), strict=False):
        backend, batch, median_ms, throughput = line.split()
        assert (backend, batch) == (name, "2")
        # Printed with 3 and 1 decimals: allow for the rounding.
        assert float(throughput) == pytest.approx(2000 / float(median_ms), rel=0.01, abs=0.06)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backend", "tensorrt"], "backend: expected some of eager, fused, compile, onnxruntime"),
        (["--batch", "1,x"], "--batch: expected comma-separated integers"),
        (["--batch", "0"], "batch sizes, iters and resolution must be positive"),
        (["--iters", "0"], "batch sizes, iters and resolution must be positive"),
    ],
)
def test_usage_errors(capsys, args, message):
    assert main(["bench", *TINY, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_cuda_without_a_gpu_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", *TINY, "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
