"""The `condnet` command: builds the parser from `condnet.commands` and runs one subcommand.

User errors (`CondnetError`) are printed as one line without a traceback, exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from condnet.commands import COMMANDS
from condnet.commands.common import split_set_options
from condnet.errors import CondnetError, Interrupted
from condnet.memory import retain_freed_memory
from condnet.version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="condnet", description="Standard, SE and SE + CondConv EfficientNet-style networks."
    )
    parser.add_argument("--version", action="version", version=f"condnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"condnet.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = split_set_options(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    retain_freed_memory()  # large tensors are not page-faulted in again at every step
    try:
        return args.run(args)
    except CondnetError as err:
        print(f"condnet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and closed: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Interrupted as err:  # training saved its state and said how to resume
        return 128 + err.signum
    except KeyboardInterrupt:
        print(f"condnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
