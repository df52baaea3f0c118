"""`benchmarks/gpu_train.py` runs end to end on the CPU."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_train_benchmark_runs_on_the_cpu(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_train", ROOT / "benchmarks" / "gpu_train.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = "--images 96 --size 16 --seconds 0.2 --batch 16 --device cpu"
    rows = bench.main([*args.split(), "--models", "paper-standard,paper-condconv"])
    out = capsys.readouterr().out
    assert [r["model"] for r in rows] == ["paper-standard", "paper-condconv"]
    assert all(r["train_images_per_s"] > 0 and r["timed_images"] >= 16 for r in rows)
    assert "| paper-condconv |" in out and "55 epochs" in out and "12,000" in out
