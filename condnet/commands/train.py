"""`condnet train`: the paper's training routine from a YAML config plus overrides."""

import argparse
from pathlib import Path

from condnet.commands.common import add_run_options, add_set_option, run_overrides
from condnet.errors import CondnetError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a network (config file + overrides)")
    p.add_argument("--config", help="YAML config (default: the paper recipe, configs/paper-*.yaml)")
    add_set_option(p, "train.epochs=3 model.name=paper-se")
    add_run_options(p)
    p.add_argument("--out", help="output folder (metrics, checkpoints, resolved config)")
    p.add_argument("--resume", metavar="OUT", help="continue the run in OUT where it stopped")
    p.add_argument(
        "--stop-after",
        type=int,
        metavar="N",
        help="stop after N epochs in all (resume later with --resume)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from condnet.config import load_config
    from condnet.engine.trainer import resume_config, train

    overrides = run_overrides(args)
    if args.resume:
        if args.config:
            raise CondnetError("--resume takes the config saved in the run; drop --config")
        cfg = resume_config(Path(args.resume), overrides)
        train(cfg, args.resume, resume=True, stop_after=args.stop_after)
    elif not args.out:
        raise CondnetError("--out is required (or --resume OUT)")
    else:
        train(load_config(args.config, overrides), args.out, stop_after=args.stop_after)
    return 0
