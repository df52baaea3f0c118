"""`condnet reproduce` and `condnet report`: Table 3, Figure 5 and Table 4 for all blocks."""

import argparse

from condnet.commands.common import add_run_options, add_set_option, run_overrides
from condnet.errors import CondnetError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="train the three blocks, then write the report")
    p.add_argument("--config", required=True, help="YAML config shared by the three runs")
    p.add_argument("--out", required=True, help="output folder: OUT/<model>/ and OUT/report.md")
    add_set_option(p, "train.epochs=3 (for all three runs)")
    add_run_options(p)
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="train N blocks side by side, each in its own process with its share of "
        "the CPU threads (default 1: one after another)",
    )
    p.set_defaults(run=run_reproduce)
    p = sub.add_parser("report", help="(re)build OUT/report.md from finished runs")
    p.add_argument("out", help="the folder given to reproduce --out")
    p.set_defaults(run=run_report)


def _print(path, rows) -> None:
    from condnet.report.build import table3_text

    print(table3_text(rows))
    print(f"report: {path}")


def run_reproduce(args: argparse.Namespace) -> int:
    from condnet.reproduce import reproduce

    if args.jobs < 1:
        raise CondnetError(f"--jobs: expected an integer >= 1, got {args.jobs}")
    _print(*reproduce(args.config, args.out, run_overrides(args), jobs=args.jobs))
    return 0


def run_report(args: argparse.Namespace) -> int:
    from condnet.report.build import build_report

    _print(*build_report(args.out))
    return 0
