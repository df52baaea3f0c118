"""`condnet evaluate`: validation loss, top-1 and top-5 of a checkpoint."""

import argparse
import json

from condnet.commands.common import add_set_option, parse_assignments


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a checkpoint on its validation set")
    p.add_argument(
        "checkpoint", help="a checkpoint file, or a run folder (its best.pt; --last: last.pt)"
    )
    p.add_argument("--last", action="store_true", help="a run folder's last.pt, not best.pt")
    p.add_argument(
        "--data",
        metavar="ROOT",
        help="evaluate on this data.root instead (a plain folder of class folders: all of it; "
        "its classes may be some of the checkpoint's)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="run.device (auto)")
    add_set_option(p, "data.source=imagefolder")
    p.add_argument(
        "--config",
        help="for a .safetensors file, which holds no training config: the data's config "
        "(default: the paper recipe; its eval sizes and normalisation are the file's)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    overrides = parse_assignments(args.set)
    if args.device:
        overrides["run.device"] = args.device
    from condnet.engine.checkpoint import model_file
    from condnet.engine.evaluation import evaluate_checkpoint
    from condnet.files import file_kind

    path = model_file(args.checkpoint, args.last)
    if path.is_file() and file_kind(path) == "safetensors":
        result = _evaluate_weights(path, overrides, args)
    else:
        result = evaluate_checkpoint(path, overrides, args.data)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['checkpoint']}{_epoch(result['epoch'])}: loss {result['loss']:.4f}  "
            f"top-1 {result['top1']:.2f} %  top-5 {result['top5']:.2f} %  "
            f"({result['count']} images of {result['classes']} classes, "
            f"{result['precision']} on {result['device']})"
        )
    return 0


def _evaluate_weights(path, overrides: dict, args: argparse.Namespace) -> dict:
    """A weights file on the data of `--config` (+ `--data`, `--set`), transformed as the
    file's eval transform says; it trained no epochs that it records."""
    from condnet.config import load_config
    from condnet.deploy.weights import read_weights
    from condnet.engine.evaluation import evaluate_model

    bundle = read_weights(path)
    spec = bundle.transform
    sizes = {"data.resize": spec.resize, "data.crop": spec.crop}
    sizes |= {"data.mean": list(spec.mean), "data.std": list(spec.std)}
    data = {"data.root": args.data} if args.data else {}
    cfg = load_config(args.config, {**sizes, **overrides, **data})
    result = evaluate_model(bundle.model, bundle.class_names, cfg, whole_folder=bool(args.data))
    return {"checkpoint": str(path), "epoch": None, **result}


def _epoch(epoch: int | None) -> str:
    return "" if epoch is None else f" (epoch {epoch})"
