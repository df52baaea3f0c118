"""`condnet models`: the presets."""

import argparse

from condnet.models import get_spec, list_models


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the model presets")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    for name in list_models():
        stages = get_spec(name).stages
        print(f"{name:<16} blocks: {', '.join(sorted({s.block for s in stages}))}")
    return 0
