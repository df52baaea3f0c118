"""`condnet export`: a checkpoint to ONNX (BN folded, dynamic batch) and/or safetensors weights."""

import argparse

from condnet.choices import CHECK_BATCHES, CHECK_TOLERANCE, MAX_OPSET, OPSET, WEIGHTS_SUFFIX
from condnet.commands.common import chosen_model_file
from condnet.errors import CondnetError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX and/or safetensors weights")
    p.add_argument(
        "checkpoint",
        metavar="CKPT",
        help="a checkpoint (.pt file, or a run folder: its best.pt) or a .safetensors file",
    )
    p.add_argument("--last", action="store_true", help="a run folder's last.pt, not best.pt")
    p.add_argument("--onnx", metavar="FILE", help="write an ONNX model (BN folded, dynamic batch)")
    p.add_argument(
        "--weights",
        metavar="FILE.safetensors",
        help="write the weights with the spec, class names and eval transform",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="compare ONNX Runtime with PyTorch at batch " + ", ".join(map(str, CHECK_BATCHES)),
    )
    p.add_argument(
        "--opset", type=int, default=OPSET, help=f"ONNX opset, {OPSET}-{MAX_OPSET} ({OPSET})"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not args.onnx and not args.weights:
        raise CondnetError("nothing to export: give --onnx FILE and/or --weights FILE.safetensors")
    if args.check and not args.onnx:
        raise CondnetError("--check compares an ONNX export: give --onnx FILE")
    if args.weights and not args.weights.endswith(WEIGHTS_SUFFIX):
        raise CondnetError(f"--weights: expected a file name ending in {WEIGHTS_SUFFIX}")
    if not OPSET <= args.opset <= MAX_OPSET:
        raise CondnetError(f"--opset: expected {OPSET} to {MAX_OPSET}, got {args.opset}")
    from condnet.deploy.export import check_onnx, export_onnx
    from condnet.deploy.model_file import read_bundle
    from condnet.deploy.weights import save_weights

    bundle = read_bundle(chosen_model_file(args.checkpoint, args.last))
    if args.weights:
        save_weights(bundle, args.weights)
        print(f"wrote {args.weights} (weights, spec, class names, eval transform)")
    if not args.onnx:
        return 0
    export_onnx(bundle, args.onnx, args.opset)
    print(f"wrote {args.onnx} (opset {args.opset}, BN folded, dynamic batch)")
    if not args.check:
        return 0
    differences = check_onnx(args.onnx, bundle.model)
    worst = max(differences.values())
    verdict = "ok" if worst <= CHECK_TOLERANCE else "FAILED"
    per_batch = ", ".join(f"batch {b}: {d:.2e}" for b, d in differences.items())
    print(
        f"check: max abs logit difference, ONNX Runtime vs PyTorch: {per_batch}; "
        f"{verdict} (tolerance {CHECK_TOLERANCE:.0e})"
    )
    return 0 if worst <= CHECK_TOLERANCE else 1
