"""Mutation check: plant one-line bugs in a copy of condnet and see that the tests catch each.

Each mutation replaces one piece of text, which must occur exactly once, in one module where
a silent bug costs most: image decoding, the data-set readers, the metrics, CondConv, BN
folding, the schedules, seeding and the tensor pipeline's crops. For each, only the tests of
that module run, against the mutated copy (`pytest -x -q`, one thread): the mutation is killed
when they fail, and survives when they pass. A survivor is either killed by a new test or
marked equivalent here, with the reason (the report lists it); an unexplained survivor, or
a baseline that fails before any mutation, makes the exit status 1.

    python tools/mutation.py                           # every mutation, a table on stdout
    python tools/mutation.py --report tools/mutation.md  # keeps the report's "## Notes"
    python tools/mutation.py --only images,metrics     # mutations whose names start so
    python tools/mutation.py --list

The repository itself is never changed: the copy lives in a temporary folder.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("condnet", "tests", "benchmarks", "configs", "pyproject.toml")

# The tests that cover each module (files, or single tests where a file is slow).
IMAGES = ("tests/test_images.py",)
READERS = ("tests/test_data.py",)
METRICS = ("tests/test_metrics.py",)
EVALUATION = (
    "tests/test_metrics.py",
    "tests/test_tensor_loader.py::test_padded_evaluation_gives_exactly_the_unpadded_metrics",
)
CONDCONV = ("tests/test_condconv.py",)
NATIVE = ("tests/test_native.py",)
ROUTING = (
    "tests/test_routing.py::test_routing_against_its_formula",
    "tests/test_routing.py::test_high_temperature_makes_routing_uniform",
    "tests/test_routing.py::test_block_c_with_each_activation_against_per_example_kernels",
)
FUSE = ("tests/test_fuse.py",)
SCHEDULE = (
    "tests/test_schedule.py::test_paper_learning_rate_schedule",
    "tests/test_schedule.py::test_schedule_per_step_is_the_same_curve_at_fractional_epochs",
    "tests/test_routing.py::test_routing_schedules",
    "tests/test_routing.py::test_apply_schedule_sets_rates_and_temperature",
)
SEEDING = ("tests/test_runtime.py",)
CROPS = ("tests/test_batch_transforms.py", "tests/test_tensor_loader.py")


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # relative to the repository
    old: str  # occurs exactly once in `path`
    new: str
    tests: tuple[str, ...]
    equivalent: str = ""  # why no test can tell it apart, for a mutation that survives


IMG, SRC = "condnet/data/images.py", "condnet/data/sources.py"
MET, EVL = "condnet/engine/metrics.py", "condnet/engine/evaluation.py"
CC, FU = "condnet/models/condconv.py", "condnet/deploy/fuse.py"
FORMS = "condnet/models/condconv_forms.py"
SCH, RT = "condnet/engine/schedule.py", "condnet/engine/runtime.py"
BT, PK = "condnet/data/batch_transforms.py", "condnet/data/safe_pickle.py"
NATIVE_PY, POOL = "condnet/models/native/__init__.py", "condnet/models/pooling.py"

MUTATIONS = [
    # --- the bugs a review planted, which the suite once let through ---------------------------
    Mutation(
        "images: 16-bit clipped to white instead of scaled",
        IMG,
        'img = img.point(lambda v: v * (1 / 256)).convert("L")',
        'img = img.convert("L")',  # Pillow clips values above 255 to 255
        IMAGES,
    ),
    Mutation(
        "images: RGBA composited on black",
        IMG,
        "(255, 255, 255, 255)",
        "(0, 0, 0, 255)",
        IMAGES,
    ),
    Mutation(
        "images: the 64-Mpixel limit removed",
        IMG,
        "if img.width * img.height > MAX_PIXELS:",
        "if False:",
        IMAGES,
    ),
    Mutation(
        "readers: down-sampled ImageNet rows read pixel-interleaved (HWC), not as planes",
        SRC,
        "images = data.reshape(-1, 3, side, side).transpose(0, 2, 3, 1)",
        "images = data.reshape(-1, side, side, 3)",
        READERS,
    ),
    Mutation(
        "readers: CIFAR rows read pixel-interleaved (HWC), not as planes",
        SRC,
        "data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)",
        "data.reshape(-1, 32, 32, 3)",
        READERS,
    ),
    Mutation(
        "metrics: top-5 counted as top-1",
        MET,
        "hits[:, :k].any(1).sum() for k in ks",
        "hits[:, :1].any(1).sum() for k in ks",
        METRICS,
    ),
    # --- image decoding ------------------------------------------------------------------------
    Mutation(
        "images: 16-bit scaled by 1/257",
        IMG,
        "v * (1 / 256)",
        "v * (1 / 257)",
        IMAGES,
    ),
    Mutation(
        "images: big-endian 16-bit only",
        IMG,
        'if img.mode in ("I;16", "I;16B", "I;16L", "I"):',
        'if img.mode in ("I;16B", "I;16L", "I"):',
        IMAGES,
    ),
    Mutation(
        "images: LA not composited",
        IMG,
        'if img.mode in ("RGBA", "LA", "PA")',
        'if img.mode in ("RGBA", "PA")',
        IMAGES,
    ),
    Mutation(
        "images: palette transparency ignored",
        IMG,
        'or (img.mode == "P" and "transparency" in img.info)',
        'or (img.mode == "P" and "transparency" not in img.info)',
        IMAGES,
    ),
    Mutation(
        "images: the limit one pixel lower (>=)",
        IMG,
        "img.width * img.height > MAX_PIXELS",
        "img.width * img.height >= MAX_PIXELS",
        IMAGES,
    ),
    Mutation(
        "images: the limit ten times higher",
        IMG,
        "MAX_PIXELS = 64_000_000",
        "MAX_PIXELS = 640_000_000",
        IMAGES,
    ),
    Mutation(
        "images: truncated files decoded",
        IMG,
        "ImageFile.LOAD_TRUNCATED_IMAGES = False",
        "ImageFile.LOAD_TRUNCATED_IMAGES = True",
        IMAGES,
    ),
    # --- data-set readers ----------------------------------------------------------------------
    Mutation(
        "readers: down-sampled ImageNet with height and width swapped",
        SRC,
        "images = data.reshape(-1, 3, side, side).transpose(0, 2, 3, 1)",
        "images = data.reshape(-1, 3, side, side).transpose(0, 3, 2, 1)",
        READERS,
    ),
    Mutation(
        "readers: CIFAR channels in BGR order",
        SRC,
        "data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)",
        "data.reshape(-1, 3, 32, 32)[:, ::-1].transpose(0, 2, 3, 1)",
        READERS,
    ),
    Mutation(
        "readers: class list order reversed",
        SRC,
        "lookup[wanted] = np.arange(len(wanted))",
        "lookup[wanted] = np.arange(len(wanted))[::-1]",
        READERS,
    ),
    Mutation(
        "readers: the first chosen class dropped",
        SRC,
        "keep = mapped >= 0",
        "keep = mapped > 0",
        READERS,
    ),
    Mutation(
        "readers: the label one past the class list taken as its last class",
        SRC,
        "np.where(original < len(lookup),",
        "np.where(original <= len(lookup),",
        READERS,
    ),
    Mutation(
        "readers: label 0 accepted in a class list",
        SRC,
        "int(first) < 1",
        "int(first) < 0",
        READERS,
    ),
    Mutation(
        "readers: CIFAR-10's fifth training batch left out",
        SRC,
        'folder / f"data_batch_{i}" for i in range(1, 6)',
        'folder / f"data_batch_{i}" for i in range(1, 5)',
        READERS,
    ),
    Mutation(
        "readers: Python 2 strings read as bytes",
        PK,
        'encoding="latin1"',
        'encoding="bytes"',
        READERS,
    ),
    Mutation(
        "readers: NumPy 1's array pickles refused",
        PK,
        '    ("numpy.core.multiarray", "_reconstruct"),\n',
        "",
        READERS,
    ),
    Mutation(
        "readers: any global unpickled",
        PK,
        "if (module, name) in _ALLOWED:",
        "if True:",
        READERS,
    ),
    Mutation(
        "readers: IDX dimensions reversed",
        SRC,
        "return data.reshape(shape)",
        "return data.reshape(shape[::-1])",
        READERS,
    ),
    # --- metrics and their evaluation ----------------------------------------------------------
    Mutation(
        "metrics: the smallest logits taken",
        MET,
        "top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices",
        "top = logits.topk(min(max(ks), logits.shape[1]), dim=1, largest=False).indices",
        METRICS,
    ),
    Mutation(
        "metrics: top-k as top-(k-1)",
        MET,
        "hits[:, :k].any(1)",
        "hits[:, : k - 1].any(1)",
        METRICS,
    ),
    Mutation(
        "metrics: fewer classes than k not handled",
        MET,
        "min(max(ks), logits.shape[1])",
        "max(ks)",
        METRICS,
    ),
    Mutation(
        "evaluation: padding rows counted",
        EVL,
        "sums[3] += (labels >= 0).sum()",
        "sums[3] += labels.numel()",
        EVALUATION,
    ),
    Mutation(
        "evaluation: top-5 reported as top-1",
        EVL,
        '"top5": 100 * top5 / count',
        '"top5": 100 * top1 / count',
        EVALUATION,
    ),
    # --- CondConv ------------------------------------------------------------------------------
    Mutation(
        "condconv: the stacked form's experts interleaved wrongly",
        FORMS,
        "weight = weight.transpose(0, 1).reshape(weight.shape[1], -1, 1, 1)",
        "weight = weight.reshape(weight.shape[1], -1, 1, 1)",
        CONDCONV,
    ),
    Mutation(
        "condconv: grouped bias repeated per channel instead of per example",
        FORMS,
        "bias.repeat(batch)",
        "bias.repeat_interleave(batch)",
        CONDCONV,
    ),
    Mutation(
        "condconv: the mixture uses the first routing weight for every expert",
        FORMS,
        "term = term * routing_weights[:, m, None, None, None]",
        "term = term * routing_weights[:, 0, None, None, None]",
        CONDCONV,
    ),
    Mutation(
        "condconv: auto stacks 16-pixel maps no more",
        CC,
        "pixels <= STACKED_MAX_PIXELS",
        "pixels < STACKED_MAX_PIXELS",
        CONDCONV,
    ),
    Mutation(
        "condconv: default padding one too many",
        CC,
        "(kernel_size // 2,) * 2 if padding is None",
        "(kernel_size // 2 + 1,) * 2 if padding is None",
        CONDCONV,
    ),
    Mutation(
        "condconv: experts initialised with a smaller bound",
        CC,
        "nn.init.kaiming_uniform_(expert, a=math.sqrt(5))",
        "nn.init.kaiming_uniform_(expert, a=math.sqrt(6))",
        CONDCONV,
    ),
    Mutation(
        "condconv: batched 1x1 strides in the other order",
        FORMS,
        "return x[:, :, :: stride[0], :: stride[1]]",
        "return x[:, :, :: stride[1], :: stride[0]]",
        CONDCONV,
    ),
    Mutation(
        "routing: temperature multiplies the logits",
        CC,
        "logits = self.fc(spatial_mean(x)) / self.temperature",
        "logits = self.fc(spatial_mean(x)) * self.temperature",
        ROUTING,
    ),
    Mutation(
        "routing: softmax over the batch",
        CC,
        "torch.softmax(logits, dim=1)",
        "torch.softmax(logits, dim=0)",
        ROUTING,
    ),
    Mutation(
        "condconv: an inference chunk leaves its last example out",
        FORMS,
        "part = slice(start, start + chunk)",
        "part = slice(start, start + chunk - 1)",
        CONDCONV,
    ),
    Mutation(
        "native: the depthwise kernel's bias gets no gradient",
        NATIVE_PY,
        "grad_bias = grad.sum((0, 2, 3))",
        "grad_bias = grad.sum((0, 2, 3)) * 0",
        NATIVE,
    ),
    Mutation(
        "native: auto sends NCHW maps to the channels_last kernel",
        FORMS,
        "and x.is_contiguous(memory_format=torch.channels_last)\n        and not torch.jit",
        "and not torch.jit",
        NATIVE + CONDCONV,
    ),
    Mutation(
        "pooling: the SE and routing pool divides by the height alone",
        POOL,
        "x.sum((2, 3)) / (x.shape[2] * x.shape[3])",
        "x.sum((2, 3)) / x.shape[2]",
        ("tests/test_golden.py", "tests/test_routing.py::test_routing_against_its_formula"),
    ),
    # --- BN folding ----------------------------------------------------------------------------
    Mutation(
        "fuse: BN's eps left out",
        FU,
        "scale = gamma / torch.sqrt(var + bn.eps)",
        "scale = gamma / torch.sqrt(var)",
        FUSE,
    ),
    Mutation(
        "fuse: the running mean added",
        FU,
        "return scale, beta - scale * mean",
        "return scale, beta + scale * mean",
        FUSE,
    ),
    Mutation(
        "fuse: an existing conv bias not scaled",
        FU,
        "bias = (old_bias * scale + shift)",
        "bias = (old_bias + shift)",
        FUSE,
    ),
    Mutation(
        "fuse: CondConv scaled along the expert axis",
        FU,
        "axis = 1 if isinstance(conv, CondConv2d) else 0",
        "axis = 0",
        FUSE,
    ),
    Mutation(
        "fuse: the input model folded in place",
        FU,
        "fused = copy.deepcopy(model).eval()",
        "fused = model.eval()",
        FUSE,
    ),
    # --- schedules -----------------------------------------------------------------------------
    Mutation(
        "schedule: warm-up one epoch ahead",
        SCH,
        "(cfg.lr_peak - cfg.lr_start) * epoch / warm",
        "(cfg.lr_peak - cfg.lr_start) * (epoch + 1) / warm",
        SCHEDULE,
    ),
    Mutation(
        "schedule: the cosine ends one epoch late",
        SCH,
        "span = max(cfg.epochs - 1 - warm, 1)",
        "span = max(cfg.epochs - warm, 1)",
        SCHEDULE,
    ),
    Mutation(
        "schedule: the cosine rises",
        SCH,
        "(1 + math.cos(math.pi * progress))",
        "(1 - math.cos(math.pi * progress))",
        SCHEDULE,
    ),
    Mutation(
        "schedule: the cosine not held at its end",
        SCH,
        "progress = min((epoch - warm) / span, 1.0)",
        "progress = (epoch - warm) / span",
        SCHEDULE,
    ),
    Mutation(
        "schedule: warm-up formula at the peak epoch too",
        SCH,
        "if epoch < warm:",
        "if epoch <= warm:",
        SCHEDULE,
        equivalent="At epoch == warmup_epochs both branches give lr_peak (each up to one rounding"
        " of the last bit): the warm-up line ends where the cosine starts.",
    ),
    Mutation(
        "schedule: routing temperature annealed from epoch 1",
        SCH,
        "+ (1.0 - cfg.routing_temperature) * epoch / cfg.routing_anneal_epochs",
        "+ (1.0 - cfg.routing_temperature) * (epoch + 1) / cfg.routing_anneal_epochs",
        SCHEDULE,
    ),
    Mutation(
        "schedule: routers' rate ramp off by one epoch",
        SCH,
        "return epoch / cfg.routing_warmup_epochs",
        "return (epoch + 1) / cfg.routing_warmup_epochs",
        SCHEDULE,
    ),
    # --- seeding -------------------------------------------------------------------------------
    Mutation(
        "seeding: every rank the same numbers",
        RT,
        "base = (seed * 1_000_003 + epoch * 7_919 + rank) % 2**31",
        "base = (seed * 1_000_003 + epoch * 7_919) % 2**31",
        SEEDING,
    ),
    Mutation(
        "seeding: every epoch the same numbers",
        RT,
        "base = (seed * 1_000_003 + epoch * 7_919 + rank) % 2**31",
        "base = (seed * 1_000_003 + rank) % 2**31",
        SEEDING,
    ),
    Mutation(
        "seeding: NumPy not seeded per epoch",
        RT,
        "np.random.seed(base)",
        "np.random.seed(0)",
        SEEDING,
    ),
    Mutation(
        "seeding: the loader's generator ignores the epoch",
        RT,
        "return torch.Generator().manual_seed(base)",
        "return torch.Generator().manual_seed(seed)",
        SEEDING,
    ),
    Mutation(
        "seeding: Python's spare Gaussian not restored",
        RT,
        "random.setstate((version, tuple(values), gauss))",
        "random.setstate((version, tuple(values), None))",
        SEEDING,
    ),
    # --- the tensor pipeline's crops -----------------------------------------------------------
    Mutation(
        "crops: never mirrored",
        BT,
        "sign = 1.0 - 2.0 * flip.double()",
        "sign = 1.0 + 0.0 * flip.double()",
        CROPS,
    ),
    Mutation(
        "crops: shifted by half a pixel",
        BT,
        "(2 * left + w) / width - 1",
        "(2 * left + w + 1) / width - 1",
        CROPS,
    ),
    Mutation(
        "crops: height and width of the box swapped in the resize",
        BT,
        "torch.stack([zero, h / height, (2 * top + h) / height - 1], 1)",
        "torch.stack([zero, w / height, (2 * top + h) / height - 1], 1)",
        CROPS,
    ),
    Mutation(
        "crops: a box never touches the right edge",
        BT,
        "torch.floor(draws[:, -1:] * (width - w + 1))",
        "torch.floor(draws[:, -1:] * (width - w))",
        CROPS,
    ),
    Mutation(
        "crops: center crop offsets rounded down",
        BT,
        "top = torch.round((sizes[:, 0] - crop) / 2).long()",
        "top = torch.floor((sizes[:, 0] - crop) / 2).long()",
        CROPS,
    ),
    Mutation(
        "crops: normalised in the wrong order",
        BT,
        "images.mul_(1 / 255).sub_(mean).div_(std)",
        "images.mul_(1 / 255).div_(std).sub_(mean)",
        CROPS,
    ),
]


@dataclass
class Outcome:
    mutation: Mutation
    killed: bool
    seconds: float
    by: str  # the first failing test, or why the run stopped


def copy_repository(target: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=ignore)
        else:
            shutil.copy2(source, target / name)


def run_tests(copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[bool, str]:
    """(passed, first failing test or reason) of `pytest -x -q tests` in `copy`."""
    env = {
        **os.environ,
        "PYTHONPATH": str(copy),
        "PYTHONDONTWRITEBYTECODE": "1",  # a mutated module is never read from a stale .pyc
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        done = subprocess.run(
            command, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f} s"
    if done.returncode == 0:
        return True, ""
    failed = re.search(r"^(?:FAILED|ERROR) (.+?)(?: - |$)", done.stdout, re.MULTILINE)
    return False, failed.group(1) if failed else f"pytest exit {done.returncode}"


def check_mutations(mutations: list[Mutation]) -> None:
    """Every mutation's text occurs exactly once in its module (else the list has gone stale)."""
    for m in mutations:
        found = (ROOT / m.path).read_text().count(m.old)
        if found != 1:
            raise SystemExit(f"mutation {m.name!r}: {m.old!r} occurs {found} times in {m.path}")


def run(mutations: list[Mutation], timeout: float) -> list[Outcome]:
    check_mutations(mutations)
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="condnet-mutation-") as folder:
        copy = Path(folder)
        copy_repository(copy)
        # The baseline: every test used passes on the unchanged copy (and imports the copy).
        probe = subprocess.run(
            [sys.executable, "-c", "import condnet; print(condnet.__file__)"],
            cwd=copy,
            env={**os.environ, "PYTHONPATH": str(copy)},
            capture_output=True,
            text=True,
        )
        if not probe.stdout.startswith(str(copy)):
            raise SystemExit(f"the copy's condnet is not the one imported: {probe.stdout!r}")
        tests = tuple(dict.fromkeys(t for m in mutations for t in m.tests))
        started = time.perf_counter()
        passed, why = run_tests(copy, tests, timeout * 4)
        print(f"baseline: {len(tests)} test targets in {time.perf_counter() - started:.0f} s")
        if not passed:
            raise SystemExit(f"the baseline fails before any mutation: {why}")
        for m in mutations:
            path = copy / m.path
            original = path.read_text()
            path.write_text(original.replace(m.old, m.new))
            started = time.perf_counter()
            try:
                passed, why = run_tests(copy, m.tests, timeout)
            finally:
                path.write_text(original)
            outcome = Outcome(m, not passed, time.perf_counter() - started, why)
            outcomes.append(outcome)
            status = "killed" if outcome.killed else "SURVIVED"
            print(f"{status:8}  {outcome.seconds:5.1f} s  {m.name}  {why}", flush=True)
    return outcomes


def unexplained(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if not o.killed and not o.mutation.equivalent]


NOTES = "\n## Notes\n"  # a report's hand-written section from here on is kept when rewritten


def report(outcomes: list[Outcome], command: str, seconds: float, notes: str = "") -> str:
    killed = sum(o.killed for o in outcomes)
    survivors = [o for o in outcomes if not o.killed]
    lines = [
        "# Mutation check",
        "",
        "One-line bugs planted in a copy of condnet, each run against the tests of its module",
        "(`tools/mutation.py`, which lists them). Produced by:",
        "",
        "```bash",
        command,
        "```",
        "",
        f"{datetime.date.today().isoformat()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}: {len(outcomes)} mutations, {killed} killed, "
        f"{len(survivors)} survived ({len(unexplained(outcomes))} unexplained), "
        f"{seconds / 60:.1f} minutes.",
        "",
        "| mutation | module | result | first failing test |",
        "|---|---|---|---|",
    ]
    for o in outcomes:
        result = "killed" if o.killed else "survived (equivalent)"
        if not o.killed and not o.mutation.equivalent:
            result = "**survived**"
        module = o.mutation.path.removeprefix("condnet/")
        lines.append(f"| {o.mutation.name} | `{module}` | {result} | {o.by or '-'} |")
    lines += ["", "## Survivors", ""]
    if not survivors:
        lines.append("None.")
    for o in survivors:
        m = o.mutation
        lines.append(f"- **{m.name}** (`{m.old}` -> `{m.new}`): " + (m.equivalent or "UNEXPLAINED"))
    return "\n".join(lines) + "\n" + notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated prefixes of mutation names")
    parser.add_argument("--list", action="store_true", help="list the mutations and stop")
    parser.add_argument("--report", type=Path, help="write the markdown report here")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per mutation")
    args = parser.parse_args(argv)
    mutations = MUTATIONS
    if args.only:
        prefixes = tuple(p.strip() for p in args.only.split(","))
        mutations = [m for m in MUTATIONS if m.name.startswith(prefixes)]
    if args.list:
        for m in mutations:
            print(f"{m.name}  ({m.path})")
        return 0
    started = time.perf_counter()
    outcomes = run(mutations, args.timeout)
    seconds = time.perf_counter() - started
    killed = sum(o.killed for o in outcomes)
    left = unexplained(outcomes)
    print(
        f"{len(outcomes)} mutations: {killed} killed, {len(outcomes) - killed} survived, "
        f"{len(left)} unexplained ({seconds / 60:.1f} min)"
    )
    if args.report:
        command = "nice -n 19 env OMP_NUM_THREADS=1 python tools/mutation.py " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        old = args.report.read_text() if args.report.exists() else ""
        notes = old[old.index(NOTES) :] if NOTES in old else ""
        args.report.write_text(report(outcomes, command.strip(), seconds, notes))
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
