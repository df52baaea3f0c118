"""`condnet evaluate`: validation loss, top-1 and top-5 of a checkpoint."""

import argparse
import json

from condnet.commands.common import add_device_option, add_set_option, run_overrides


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
    add_device_option(p)
    add_set_option(p, "data.source=imagefolder")
    p.add_argument(
        "--config",
        help="for a .safetensors file, which holds no training config: the data's config "
        "(default: the paper recipe; its eval sizes and normalisation are the file's)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from condnet.deploy.model_file import evaluate_model_file
    from condnet.engine.checkpoint import model_file

    path = model_file(args.checkpoint, args.last)
    result = evaluate_model_file(path, run_overrides(args), args.data, args.config)
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


def _epoch(epoch: int | None) -> str:
    return "" if epoch is None else f" (epoch {epoch})"
