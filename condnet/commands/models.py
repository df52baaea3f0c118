"""`condnet models`: the presets."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the model presets")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from condnet.models import get_spec, list_models

    for name in list_models():
        stages = get_spec(name).stages
        print(f"{name:<16} blocks: {', '.join(sorted({s.block for s in stages}))}")
    return 0
