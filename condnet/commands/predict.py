"""`condnet predict`: classify image files or folders with a .pt, .safetensors or .onnx model."""

import argparse
import json
import sys

from condnet.choices import DEVICES
from condnet.commands.common import chosen_model_file
from condnet.errors import CondnetError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify images with a checkpoint, weights or ONNX file")
    p.add_argument(
        "model",
        metavar="MODEL",
        help="a checkpoint (.pt), .safetensors or .onnx file, or a run folder (its best.pt)",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="IMAGE_OR_DIR",
        help="image files, or folders read recursively in sorted order",
    )
    p.add_argument("--last", action="store_true", help="a run folder's last.pt, not best.pt")
    p.add_argument("--device", default="cpu", choices=DEVICES, help="cpu or cuda (cpu)")
    p.add_argument("--topk", type=int, default=5, help="classes to show per image (5)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (32)")
    p.add_argument("--json", action="store_true", help="one JSON object per image and line")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from condnet.deploy.predict import Failure, format_prediction, load_classifier, predict

    if args.topk < 1 or args.batch_size < 1:
        raise CondnetError("--topk and --batch-size must be positive integers")
    classifier = load_classifier(chosen_model_file(args.model, args.last), args.device)
    found = failed = 0
    for result in predict(classifier, args.inputs, args.topk, args.batch_size):
        found += 1
        if isinstance(result, Failure):
            failed += 1
            reason = " ".join(result.reason.split())  # exactly one line per file
            print(f"condnet predict: skipped {reason}", file=sys.stderr)
        else:
            print(json.dumps(result.to_dict()) if args.json else format_prediction(result))
    if not found:
        raise CondnetError(f"no image files found in {', '.join(args.inputs)}")
    return 1 if failed else 0
