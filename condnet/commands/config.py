"""`condnet config show`: the resolved configuration of a config file and overrides."""

import argparse

from condnet.commands.common import add_run_options, add_set_option, run_overrides


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="show the resolved configuration, without running")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser(
        "show", help="print the config a run would use (file, base files and overrides), as YAML"
    )
    show.add_argument("--config", help="YAML config (default: the paper recipe)")
    add_set_option(show, "train.epochs=3")
    add_run_options(show)
    show.set_defaults(run=run_show)


def run_show(args: argparse.Namespace) -> int:
    import yaml

    from condnet.config import load_config

    cfg = load_config(args.config, run_overrides(args))
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0
