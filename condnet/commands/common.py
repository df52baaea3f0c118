"""Helpers shared by subcommands: the one `--set KEY=VALUE` option and its parsing."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from condnet.checks import MODEL_OVERRIDES
from condnet.choices import RUN_DEVICES
from condnet.errors import CondnetError


def add_set_option(parser: argparse.ArgumentParser, example: str) -> None:
    """`--set KEY=VALUE ...`: dotted config keys (values read as YAML), in every command; it
    may repeat and come before or after the positional arguments (`split_set_options`)."""
    parser.add_argument(
        "--set",
        action="extend",
        nargs=1,
        default=[],
        metavar="KEY=VALUE",
        help=f"dotted config override, e.g. {example} (several: --set A=1 B=2)",
    )


def split_set_options(argv: Sequence[str]) -> list[str]:
    """``--set A=1 B=2 CKPT`` as ``--set A=1 --set B=2 CKPT``: after `--set`, each following
    KEY=VALUE word is one more override, and the first word that is not one is an argument of
    its own (argparse alone would take it as a value too)."""
    out, after_set = [], False
    for word in argv:
        if word == "--set":
            after_set = True
        elif after_set and "=" in word and not word.startswith("-"):
            if out[-1] != "--set":
                out.append("--set")
        else:
            after_set = False
        out.append(word)
    return out


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


def parse_model_overrides(items: Sequence[str]) -> dict[str, Any]:
    """The model overrides of a command that builds a model alone (profile, bench): only
    ``model.overrides.KEY=VALUE`` applies; returns {KEY: value}."""
    overrides = {}
    for key, value in parse_assignments(items).items():
        if not key.startswith(MODEL_OVERRIDES):
            hint = f" (write {MODEL_OVERRIDES}{key}=...)" if "." not in key else ""
            raise CondnetError(
                f"--set {key}: this command takes {MODEL_OVERRIDES}KEY=VALUE only{hint}"
            )
        overrides[key.removeprefix(MODEL_OVERRIDES)] = value
    return overrides


def short_assignments(items: Sequence[str]) -> list[str]:
    """``model.overrides.KEY=VALUE`` as ``KEY=VALUE``, for a header line."""
    return [item.removeprefix(MODEL_OVERRIDES) for item in items]


def chosen_model_file(path: str, last: bool) -> str:
    """The file a model argument names (`condnet.engine.checkpoint.model_file`), said on
    stderr when a run folder was given, so the output names the file used."""
    if not Path(path).is_dir():
        return path  # a file (an ONNX one too): nothing to choose, torch not imported
    from condnet.engine.checkpoint import model_file

    chosen = model_file(path, last)
    if str(chosen) != path:
        print(f"condnet: using {chosen}", file=sys.stderr)
    return str(chosen)


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """`--device D`: a shortcut for `--set run.device=D`."""
    parser.add_argument("--device", choices=RUN_DEVICES, help="run.device (auto)")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """`--seed` and `--device`: shortcuts for `--set run.seed=N run.device=D`."""
    parser.add_argument("--seed", type=int, help="run.seed: weights, data order, augmentation")
    add_device_option(parser)


def run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """`--set`, with `--seed` and `--device` (where the command has them) as the run keys
    they stand for."""
    overrides = parse_assignments(args.set)
    shortcuts = (("run.seed", "seed"), ("run.device", "device"))
    for key, value in ((key, getattr(args, name, None)) for key, name in shortcuts):
        if value is not None:
            overrides[key] = value
    return overrides
