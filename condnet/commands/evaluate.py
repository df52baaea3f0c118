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
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    overrides = parse_assignments(args.set)
    if args.device:
        overrides["run.device"] = args.device
    from condnet.engine.checkpoint import model_file
    from condnet.engine.evaluation import evaluate_checkpoint

    result = evaluate_checkpoint(model_file(args.checkpoint, args.last), overrides, args.data)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['checkpoint']} (epoch {result['epoch']}): loss {result['loss']:.4f}  "
            f"top-1 {result['top1']:.2f} %  top-5 {result['top5']:.2f} %  "
            f"({result['count']} images of {result['classes']} classes, "
            f"{result['precision']} on {result['device']})"
        )
    return 0
