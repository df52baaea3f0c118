"""The GPU path checked on one CUDA device in about five minutes, each result printed before the
next section starts (a timeout still leaves everything measured until then).

Sections, in order:

1. ``tests``: ``pytest tests/test_cuda.py`` (bf16 autocast, fused SGD, compiled runs of the
   standard and CondConv networks, host syncs, the tensor pipeline on the device).
2. ``formulations``: every CondConv layer of paper-condconv at the paper's batch and crop: the
   form ``auto`` picks there and every exact form of `condnet.models.condconv_forms` that
   applies, each timed (forward and backward, bf16 autocast, channels_last input), with its
   output layout and its distance to ``auto``'s output; totals per layer role.
3. ``cap``: the routing cap's cost per step (the routers' relative gradient clip), against the
   whole step.
4. ``syncs``: host syncs (``torch.cuda.set_sync_debug_mode``) in a training epoch, an
   evaluation and the routing monitor's epoch summary: one each is the design.
5. ``resume``: a run saved with NCHW weights resumed with ``run.channels_last``: the fused
   update steps and the momentum takes the weights' strides.
6. ``compiled``: paper-condconv compiled, with routers, the cap and the routing monitor, over
   3 epochs: graphs, graph breaks, recompiles after the first epoch, the loss, peak memory.
7. ``gpu_train``: ``benchmarks/gpu_train.py`` for all three blocks.

    python benchmarks/gpu_smoke.py --log gpu-smoke.log      # one GPU, about five minutes
    python benchmarks/gpu_smoke.py --cpu-check               # the CPU-side parts, tiny (tests)

Without a CUDA device it refuses in one line, unless ``--cpu-check``: then the sections that
need no GPU run on the CPU at toy sizes (Inductor replaced by Dynamo's eager backend) and the
others say they were skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import io
import math
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from condnet.config import Config, from_dict  # noqa: E402
from condnet.data.datasets import load_splits  # noqa: E402
from condnet.data.tensor_loader import DeviceSplit  # noqa: E402
from condnet.engine.checkpoint import load_checkpoint  # noqa: E402
from condnet.engine.evaluation import evaluate  # noqa: E402
from condnet.engine.loaders import eval_loader, split_data, train_loader  # noqa: E402
from condnet.engine.metrics import read_metrics  # noqa: E402
from condnet.engine.runtime import make_runtime, seed_epoch  # noqa: E402
from condnet.engine.trainer import resume_config, start_run, train, train_one_epoch  # noqa: E402
from condnet.models import build_model  # noqa: E402
from condnet.models import condconv_forms as forms  # noqa: E402
from condnet.models.condconv import CondConv2d  # noqa: E402
from condnet.models.layout import channels_last_weights  # noqa: E402
from condnet.timing import time_call  # noqa: E402

SECTIONS = ("tests", "formulations", "cap", "syncs", "resume", "compiled", "gpu_train")
GPU_ONLY = ("tests", "syncs")  # the CUDA tests themselves; sync counting needs CUDA
TOY_MODEL = {"widths": [8, 8, 16, 16, 24, 24], "repeats": 1, "head_channels": 32}


@dataclass
class Smoke:
    """How this check runs: on the GPU at the paper's sizes, or on the CPU at toy ones."""

    device: torch.device
    cpu_check: bool
    workdir: Path

    @property
    def batch(self) -> int:
        return 8 if self.cpu_check else 256

    @property
    def crop(self) -> int:
        return 16 if self.cpu_check else 56

    def say(self, line: str = "") -> None:
        print(line, flush=True)


class Tee(io.TextIOBase):
    """Writes to every one of `streams` at once, flushing each (a timeout loses nothing)."""

    def __init__(self, *streams) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
            stream.flush()
        return len(text)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-check", action="store_true", help="run the CPU-side parts, tiny")
    p.add_argument("--only", help=f"comma-separated sections (default: all of {SECTIONS})")
    p.add_argument("--log", type=Path, help="also append everything printed to this file")
    p.add_argument("--tests-timeout", type=int, default=180, help="seconds for the CUDA tests")
    p.add_argument("--train-timeout", type=int, default=240, help="seconds for gpu_train.py")
    args = p.parse_args(argv)
    chosen = args.only.split(",") if args.only else list(SECTIONS)
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        p.error(f"--only: unknown section {unknown[0]!r} (choose from {', '.join(SECTIONS)})")
    args.sections = chosen
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not torch.cuda.is_available() and not args.cpu_check:
        print(
            "gpu_smoke: no CUDA device is visible; run it on a GPU machine "
            "(--cpu-check runs its CPU-side parts)",
            file=sys.stderr,
        )
        return 2
    device = torch.device("cpu" if args.cpu_check else "cuda")
    with contextlib.ExitStack() as stack:
        if args.log is not None:  # everything printed, the training loop's lines included
            log = stack.enter_context(args.log.open("a"))
            stack.enter_context(contextlib.redirect_stdout(Tee(sys.stdout, log)))
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        smoke = Smoke(device, args.cpu_check, workdir)
        smoke.say(header(smoke))
        failed = [name for name in args.sections if not run_section(smoke, name, args)]
        ok = len(args.sections) - len(failed)
        smoke.say(f"== done: {ok} sections ok, failed: {failed or 'none'}")
    return 1 if failed else 0


def header(smoke: Smoke) -> str:
    name = torch.cuda.get_device_name(0) if smoke.device.type == "cuda" else "CPU (--cpu-check)"
    return f"gpu_smoke {datetime.datetime.now():%Y-%m-%d %H:%M}  {name}  torch {torch.__version__}"


def run_section(smoke: Smoke, name: str, args: argparse.Namespace) -> bool:
    """Run one section, printing its results; False when it failed (the next ones still run)."""
    smoke.say(f"== {name}")
    if smoke.cpu_check and name in GPU_ONLY:
        smoke.say("skipped: needs CUDA")
        return True
    started = time.perf_counter()
    try:
        SECTION_RUNS[name](smoke, args)
    except Exception as err:  # a section's failure is a result: report it and go on
        smoke.say(f"FAILED: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        return False
    finally:
        smoke.say(f"({time.perf_counter() - started:.1f} s)")
    return True


# --- 1, 7: the CUDA tests and gpu_train.py, as subprocesses ---------------------------------


def stream(smoke: Smoke, command: list[str], timeout: int) -> None:
    """Run `command` in the repository, printing its output as it comes; raises on failure."""
    proc = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    for line in proc.stdout:
        smoke.say(line.rstrip())
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(f"{command[1]}... stopped after {timeout} s")
    if proc.wait() != 0:
        raise RuntimeError(f"exit status {proc.returncode}")


def run_tests(smoke: Smoke, args: argparse.Namespace) -> None:
    stream(
        smoke,
        [sys.executable, "-m", "pytest", "-q", "-rs", "tests/test_cuda.py"],
        args.tests_timeout,
    )


def run_gpu_train(smoke: Smoke, args: argparse.Namespace) -> None:
    command = [sys.executable, "benchmarks/gpu_train.py"]
    if smoke.cpu_check:
        command += "--device cpu --images 64 --size 16 --batch 16 --seconds 0.1".split()
        command += ["--models", "paper-standard", "--set", *overrides_set(toy=True)]
    stream(smoke, command, args.train_timeout)


def overrides_set(toy: bool) -> list[str]:
    return [f"model.overrides.{k}={v}" for k, v in TOY_MODEL.items()] if toy else []


# --- 2: CondConv's formulations, layer by layer ----------------------------------------------


def layer_inputs(smoke: Smoke) -> list[tuple[CondConv2d, torch.Tensor, torch.Tensor]]:
    """Every CondConv layer of paper-condconv with the input and routing weights it gets."""
    model = channels_last_weights(build_model("paper-condconv", num_classes=100).to(smoke.device))
    seen: dict[CondConv2d, tuple] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, a: seen.setdefault(mod, a))
        for m in model.modules()
        if isinstance(m, CondConv2d)
    ]
    x = torch.randn(smoke.batch, 3, smoke.crop, smoke.crop, device=smoke.device)
    with torch.no_grad():
        model.eval()(x.contiguous(memory_format=torch.channels_last))
    for hook in hooks:
        hook.remove()
    return [(m, a[0].contiguous(memory_format=torch.channels_last), a[1]) for m, a in seen.items()]


def role(layer: CondConv2d) -> str:
    if layer.kernel_size != (1, 1):
        return "depthwise"
    return "expand 1x1" if layer.out_channels > layer.in_channels else "project 1x1"


def layer_forms(layer: CondConv2d, x: torch.Tensor) -> dict[str, Callable]:
    """name -> fn(x, r): `auto` as the layer picks it here, then every exact form of
    `condnet.models.condconv_forms` that applies to `layer` on `x`."""
    args = (layer.weight, None, layer.bias, layer.stride, layer.padding, layer.groups)

    def pure(form: Callable) -> Callable:
        return lambda x, r: form(x, args[0], r, *args[2:])

    out = {f"auto ({layer.choose_form(x)})": layer}
    for name, form in forms.FORMS.items():
        if forms.applies(name, layer.weight, layer.groups, x):
            out[name] = pure(form)
    return out


def median_seconds(fn: Callable[[], object], min_run_time: float) -> float:
    """The median time of `fn()` over blocks of calls filling `min_run_time` (`condnet.timing`)."""
    return time_call(fn, min_seconds=min_run_time).median


def fwd_bwd(fn: Callable, x: torch.Tensor, r: torch.Tensor, amp: bool) -> torch.Tensor:
    """One training use of a formulation: forward (bf16 autocast when `amp`), then backward."""
    with torch.autocast(x.device.type, torch.bfloat16, enabled=amp):
        out = fn(x, r)
    out.float().sum().backward()
    return out


def time_forms(smoke: Smoke, layer: CondConv2d, x, r) -> dict[str, tuple[float, bool, float]]:
    """name -> (seconds, output channels_last, max difference relative to `auto`'s output)."""
    results, reference = {}, None
    for name, fn in layer_forms(layer, x).items():
        step = functools.partial(fwd_bwd, fn, x, r, not smoke.cpu_check)
        out = step().float()
        reference = out if reference is None else reference
        error = ((out - reference).abs().max() / reference.abs().max().clamp_min(1e-9)).item()
        seconds = median_seconds(step, 0.002 if smoke.cpu_check else 0.05)
        results[name] = (seconds, out.is_contiguous(memory_format=torch.channels_last), error)
    return results


def run_formulations(smoke: Smoke, args: argparse.Namespace) -> None:
    totals: dict[tuple[str, str], list] = {}
    for layer, x, r in layer_inputs(smoke):
        for name, (seconds, last, error) in time_forms(smoke, layer, x, r).items():
            row = totals.setdefault((role(layer), name), [0.0, True, 0.0, 0])
            row[0] += seconds
            row[1] &= last
            row[2], row[3] = max(row[2], error), row[3] + 1
    smoke.say(f"batch {smoke.batch}, {smoke.crop} px, forward + backward, channels_last input")
    smoke.say(
        "| layers | formulation | ms (sum over layers) | output channels_last | max rel. diff |"
    )
    smoke.say("|---|---|---|---|---|")
    for (kind, name), (seconds, last, error, count) in totals.items():
        smoke.say(f"| {kind} x{count} | {name} | {1e3 * seconds:.2f} | {last} | {error:.1e} |")


# --- 3, 4: the cap's cost and the host syncs -------------------------------------------------


def run_config(smoke: Smoke, **overrides) -> Config:
    """A paper-condconv run on synthetic data on this device (toy-sized with --cpu-check)."""
    images, size = (192, 20) if smoke.cpu_check else (4096, 64)
    data = {
        "model": {"name": "paper-condconv"},
        "data": {
            "source": "synthetic",
            "pipeline": "tensor",
            "cache": str(smoke.workdir / "cache"),
            "synthetic_images": images,
            "synthetic_classes": 10,
            "synthetic_size": size,
            "resize": size,
            "crop": smoke.crop,
        },
        "train": {
            "epochs": 3,
            "warmup_epochs": 1,
            "batch_size": smoke.batch * 4,
            "eval_batch_size": smoke.batch * 4,
        },
        "run": {"device": smoke.device.type, "amp": True, "channels_last": True},
    }
    if smoke.cpu_check:
        data["model"]["overrides"] = dict(TOY_MODEL)
        data["run"]["threads"] = 1
    return from_dict(data, overrides)


def device_data(cfg: Config) -> DeviceSplit:
    """The run's training split, cached and on its device."""
    train_split, _ = load_splits(cfg.data, cfg.run.seed)
    return split_data(cfg, make_runtime(cfg.run), train_split, "train")


def one_step(ctx, images: torch.Tensor, labels: torch.Tensor, cap: bool) -> None:
    """The training step of `train_one_epoch`, with or without the cap after the backward pass."""
    with ctx.rt.autocast():
        loss = F.cross_entropy(ctx.net(images), labels)
    ctx.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cap:
        ctx.routers.after_backward(ctx.optimizer)
    ctx.optimizer.step()


def run_cap(smoke: Smoke, args: argparse.Namespace) -> None:
    cfg = run_config(smoke, **{"train.routing_grad_clip": 1.0, "run.routing_stats_every": 0})
    rt = make_runtime(cfg.run)
    ctx = start_run(cfg, rt, cfg.data.synthetic_classes)
    images, labels, _ = next(iter(train_loader(cfg, device_data(cfg), rt, 0, seed_epoch(0, 0, 0))))
    budget = 0.01 if smoke.cpu_check else 1.0
    plain = median_seconds(lambda: one_step(ctx, images, labels, cap=False), budget)
    capped = median_seconds(lambda: one_step(ctx, images, labels, cap=True), budget)
    alone = median_seconds(lambda: ctx.routers.after_backward(ctx.optimizer), budget)
    smoke.say(
        f"eager step, batch {len(labels)}: {1e3 * plain:.2f} ms; "
        f"with the cap {1e3 * capped:.2f} ms "
        f"(+{100 * (capped / plain - 1):.1f} %); the cap alone {1e3 * alone:.2f} ms "
        f"over {len(ctx.routers.pairs)} routers"
    )


def count_syncs(work: Callable[[], object]) -> tuple[object, int]:
    """`work()`'s result and how many times it made the host wait for the CUDA device."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            result = work()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return result, sum("synchroniz" in str(w.message) for w in caught)


def run_syncs(smoke: Smoke, args: argparse.Namespace) -> None:
    cfg = run_config(smoke, **{"train.routing_grad_clip": 1.0, "run.routing_stats_every": 2})
    rt = make_runtime(cfg.run)
    ctx = start_run(cfg, rt, cfg.data.synthetic_classes)
    data = device_data(cfg)
    loader, validation = (
        train_loader(cfg, data, rt, 0, seed_epoch(0, 0, 0)),
        eval_loader(cfg, data, rt),
    )
    (_, seen, _), train_syncs = count_syncs(lambda: train_one_epoch(ctx, loader, 0))
    _, eval_syncs = count_syncs(lambda: evaluate(ctx.net, validation, rt, monitor=ctx.monitor))
    _, summary_syncs = count_syncs(lambda: ctx.monitor.epoch_records(0))
    smoke.say(
        f"host syncs: training epoch ({len(loader)} steps, {seen} images) {train_syncs}; "
        f"evaluation ({len(validation)} batches) {eval_syncs}; routing summary {summary_syncs}"
    )


# --- 5, 6: resume across layouts; the compiled run -------------------------------------------


def run_resume(smoke: Smoke, args: argparse.Namespace) -> None:
    out = smoke.workdir / "resume"
    cfg = run_config(smoke, **{"run.channels_last": False, "train.epochs": 2})
    train(cfg, out, progress=False, stop_after=1)
    changed = resume_config(out, {"run.channels_last": True})
    ctx = start_run(changed, make_runtime(changed.run), 10, state=load_checkpoint(out / "last.pt"))
    params = [p for g in ctx.optimizer.param_groups for p in g["params"]]
    alike = all(ctx.optimizer.state[p]["momentum_buffer"].stride() == p.stride() for p in params)
    train(changed, out, resume=True, progress=False)
    records = read_metrics(out)
    fused = load_checkpoint(out / "last.pt")["optimizer"]["param_groups"][0]["fused"]
    smoke.say(
        f"NCHW -> channels_last: momentum strides match the weights: {alike}; fused: {fused}; "
        f"epochs {[r['epoch'] for r in records]}, losses {losses(records)}"
    )
    if not alike or len(records) != 2 or not all(math.isfinite(r["train_loss"]) for r in records):
        raise RuntimeError("the resumed run did not continue as it should")


def losses(records: list[dict]) -> list[float]:
    return [round(r["train_loss"], 4) for r in records]


@contextlib.contextmanager
def compiled_with(backend: str | None) -> Iterator[None]:
    """torch.compile as the trainer calls it, on `backend` (None: Inductor, the default)."""
    if backend is None:
        yield
        return
    real = torch.compile
    torch.compile = functools.partial(real, backend=backend)
    try:
        yield
    finally:
        torch.compile = real


def run_compiled(smoke: Smoke, args: argparse.Namespace) -> None:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    if smoke.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    cfg = run_config(
        smoke, **{"run.compile": True, "train.routing_grad_clip": 1.0, "run.routing_stats_every": 2}
    )
    out = smoke.workdir / "compiled"
    with compiled_with("eager" if smoke.cpu_check else None):
        started = time.perf_counter()
        train(cfg, out, progress=False, stop_after=1)
        first, graphs = time.perf_counter() - started, counters["stats"]["unique_graphs"]
        train(resume_config(out), out, resume=True, progress=False)
    breaks = {reason.splitlines()[0][:90]: n for reason, n in counters["graph_break"].items()}
    records = read_metrics(out)
    peak = torch.cuda.max_memory_allocated() / 2**30 if smoke.device.type == "cuda" else math.nan
    smoke.say(
        f"graphs after epoch 1: {graphs}, after 3 (resumed): {counters['stats']['unique_graphs']}; "
        f"graph breaks: {sum(breaks.values())} {breaks or ''}"
    )
    smoke.say(
        f"epoch 1 with compilation {first:.1f} s; losses {losses(records)}; "
        f"img/s {[round(r['images_per_second']) for r in records]}; peak {peak:.2f} GiB"
    )
    if not all(math.isfinite(r["train_loss"]) for r in records):
        raise RuntimeError("the loss is not finite")


SECTION_RUNS = {
    "tests": run_tests,
    "formulations": run_formulations,
    "cap": run_cap,
    "syncs": run_syncs,
    "resume": run_resume,
    "compiled": run_compiled,
    "gpu_train": run_gpu_train,
}


if __name__ == "__main__":
    sys.exit(main())
