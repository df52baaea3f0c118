"""The `condnet` command: parses arguments and calls the library. Nothing else lives here."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Sequence

import yaml

from condnet.errors import CondnetError


def parse_assignments(items: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[1, 2]"]`` -> ``{"a.b": 1, "c": [1, 2]}``; values are read as YAML."""
    result = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise CondnetError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            result[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise CondnetError(f"--set {key}: cannot read value {text!r}") from None
    return result


def cmd_models(args: argparse.Namespace) -> int:
    from condnet.models import get_spec, list_models

    for name in list_models():
        stages = get_spec(name).stages
        print(f"{name:<16} blocks: {', '.join(sorted({s.block for s in stages}))}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from condnet.complexity import format_profile, profile
    from condnet.models import build_model

    overrides = parse_assignments(args.set)
    model = build_model(args.model, **overrides)
    name = args.model + "".join(f" {k}={v}" for k, v in overrides.items())
    if args.resolution < 1:
        raise CondnetError(f"--resolution: expected a positive integer, got {args.resolution}")
    prof = profile(model, args.resolution, name if overrides else None)
    print(json.dumps(prof.to_dict(), indent=2) if args.json else format_profile(prof))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="condnet", description="Standard, SE and SE + CondConv EfficientNet-style networks."
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the model presets")
    p.set_defaults(run=cmd_models)

    p = sub.add_parser("profile", help="MACs and coefficients per layer (paper Table 4)")
    p.add_argument("--model", default="paper-standard", help="preset name (see `condnet models`)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model override, e.g. kernel_size=5 or widths=[16,24,40,80,160,320]")
    p.add_argument("--resolution", type=int, default=56, help="input height and width (56)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_profile)
    return parser


def _version() -> str:
    from condnet import __version__

    return f"condnet {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except CondnetError as err:
        print(f"condnet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and closed: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"condnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
