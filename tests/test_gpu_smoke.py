"""`benchmarks/gpu_smoke.py`: its refusal without a GPU, and every CPU-side part at toy sizes
(`--cpu-check`), so that the one run on a lent GPU does not stop on a mistake found here."""

import pytest
import torch

from tests.helpers import load_benchmark


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_without_a_gpu_it_refuses_in_one_line(capsys):
    assert load_benchmark("gpu_smoke").main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1
    assert "no CUDA device" in captured.err and "--cpu-check" in captured.err


def test_unknown_sections_are_refused(capsys):
    with pytest.raises(SystemExit):
        load_benchmark("gpu_smoke").main(["--cpu-check", "--only", "formulation"])
    assert "unknown section 'formulation'" in capsys.readouterr().err


def test_every_section_runs_on_the_cpu_and_prints_as_it_goes(capsys, tmp_path):
    smoke = load_benchmark("gpu_smoke")
    log = tmp_path / "smoke.log"
    assert smoke.main(["--cpu-check", "--log", str(log)]) == 0
    out = capsys.readouterr().out
    assert log.read_text() == out  # the log holds every line printed
    headers = [line[3:] for line in out.splitlines() if line.startswith("== ")]
    assert headers == [*smoke.SECTIONS, "done: 7 sections ok, failed: none"]
    sections = dict(zip(smoke.SECTIONS, out.split("\n== ")[1:-1], strict=True))
    assert all("skipped: needs CUDA" in sections[name] for name in smoke.GPU_ONLY)
    table = sections["formulations"].splitlines()
    rows = [line.split(" | ") for line in table if line.startswith("| ") and " x" in line]
    kinds = {(row[0].lstrip("| "), row[1]) for row in rows}
    assert {("depthwise x16", "mixture"), ("expand 1x1 x16", "stacked")} <= kinds
    assert ("project 1x1 x16", "rows") in kinds and ("depthwise x16", "native") in kinds
    # The forms the GPU runs keep channels_last in every layer, and all forms agree.
    assert all(row[3] == "True" for row in rows if row[1] in ("rows", "mixture"))
    assert all(float(row[4].rstrip(" |")) < 1e-4 for row in rows)
    assert "the cap alone" in sections["cap"] and "over 6 routers" in sections["cap"]
    assert "momentum strides match the weights: True" in sections["resume"]
    assert "epochs [1, 2]" in sections["resume"]
    assert "graphs after epoch 1:" in sections["compiled"]
    assert "| paper-standard |" in sections["gpu_train"]
