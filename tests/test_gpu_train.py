"""`benchmarks/gpu_train.py` times the epoch `condnet train` runs, end to end on the CPU."""

from condnet.engine import trainer
from tests.helpers import load_benchmark


def test_gpu_train_benchmark_times_the_training_loops_own_epochs(capsys, monkeypatch):
    """Every epoch it times is the trainer's, with the routing monitor and the router cap that
    `train()` sets up, over the whole synthetic training set."""
    contexts, samples, caps = [], [], []
    real_epoch = trainer.train_one_epoch

    def spy(ctx, loader, epoch):
        contexts.append(ctx)
        return real_epoch(ctx, loader, epoch)

    monkeypatch.setattr(trainer, "train_one_epoch", spy)
    monitor = trainer.RoutingMonitor
    sample, note = monitor.train_step, monitor.note_cap
    monkeypatch.setattr(
        monitor, "train_step", lambda m, step: samples.append(step) or sample(m, step)
    )
    monkeypatch.setattr(
        monitor, "note_cap", lambda m, step, f: caps.append(len(f)) or note(m, step, f)
    )
    args = "--images 96 --size 16 --seconds 0.2 --batch 16 --device cpu --warmup 2"
    args += " --set train.routing_grad_clip=1 run.routing_stats_every=2"
    rows = load_benchmark("gpu_train").main(
        [*args.split(), "--models", "paper-standard,paper-condconv"]
    )
    out = capsys.readouterr().out
    assert [r["model"] for r in rows] == ["paper-standard", "paper-condconv"]
    assert all(r["train_images_per_s"] > 0 and r["timed_epochs"] >= 1 for r in rows)
    assert [r["routing"] for r in rows] == [False, True]
    assert "| paper-condconv |" in out and "55 epochs" in out and "12,000" in out
    condconv = [c for c in contexts if c.monitor is not None]
    assert condconv and all(c.routers is not None for c in condconv)
    assert all(c.routers is None for c in contexts if c.monitor is None)
    # After every backward pass: a warm-up epoch of 2 steps, then whole epochs of 96 // 16.
    assert samples[:2] == [0, 1] and samples[2:8] == list(range(6))
    assert len(caps) == len(samples) and set(caps) == {16}  # the cap ran on all 16 routers
