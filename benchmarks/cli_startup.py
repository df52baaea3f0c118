"""How fast `condnet` starts, and what predicting one image costs with each model format.

    python benchmarks/cli_startup.py            # about a minute on 2 cores

Each command runs in a fresh process, `--runs` times; the table gives the median wall time
and the largest peak resident memory (the child's ru_maxrss). The model files are made once,
in a temporary folder, from an untrained paper-condconv (its speed does not depend on its
weights): a checkpoint, a safetensors file and an ONNX file, and one 64x64 PNG.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_files(folder: Path) -> None:
    """A checkpoint, weights and an ONNX file of one untrained network, and an image."""
    import torch
    from PIL import Image

    import condnet
    from condnet.data.transform_spec import TransformSpec
    from condnet.deploy.bundle import Bundle
    from condnet.deploy.export import export_onnx
    from condnet.deploy.weights import save_weights
    from condnet.engine.checkpoint import checkpoint_state, save_checkpoint

    torch.manual_seed(0)
    model = condnet.build_model("paper-condconv").eval()
    names = [f"class {i}" for i in range(model.num_classes)]
    bundle = Bundle(model, names, TransformSpec())
    save_checkpoint(
        checkpoint_state(model, names, eval_transform=bundle.transform), folder / "m.pt"
    )
    save_weights(bundle, folder / "m.safetensors")
    export_onnx(bundle, folder / "m.onnx")
    Image.new("RGB", (64, 64), (30, 160, 90)).save(folder / "image.png")


def measure(command: list[str], runs: int) -> tuple[float, float]:
    """(median seconds, largest peak resident MB) of `command` in fresh processes."""
    times, peak = [], 0.0
    for _ in range(runs):
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own resource use
        times.append(time.perf_counter() - started)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"failed: {' '.join(command)}")
        peak = max(peak, usage.ru_maxrss / 1024)  # kilobytes on Linux
    return statistics.median(times), peak


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="fresh processes per command (5)")
    p.add_argument("--make", metavar="FOLDER", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.make:  # in a child: this process must not hold torch, its children fork from it
        make_files(Path(args.make))
        return
    condnet = str(Path(sys.executable).with_name("condnet"))
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, __file__, "--make", tmp], check=True)
        files = {kind: Path(tmp) / f"m.{kind}" for kind in ("pt", "safetensors", "onnx")}
        files["image"] = Path(tmp) / "image.png"
        commands = {
            "condnet --help": [condnet, "--help"],
            "condnet models": [condnet, "models"],
        } | {
            f"condnet predict m.{kind} image.png": [
                condnet,
                "predict",
                str(files[kind]),
                str(files["image"]),
            ]
            for kind in ("onnx", "pt", "safetensors")
        }
        print(
            f"{datetime.date.today()}, {platform.processor() or platform.machine()}, "
            f"Python {platform.python_version()}, median of {args.runs} fresh processes"
        )
        print("| command | seconds | peak MB |")
        print("|---|---|---|")
        for name, command in commands.items():
            seconds, peak = measure(command, args.runs)
            print(f"| `{name}` | {seconds:.2f} | {peak:.0f} |", flush=True)


if __name__ == "__main__":
    main()
