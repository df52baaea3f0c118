"""`condnet routing`: a CondConv run's routing diagnostics as figures and a table."""

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "routing", help="figures of a CondConv run's routing (from its routing.jsonl)"
    )
    p.add_argument("run_dir", help="a run folder of a CondConv network")
    p.add_argument("--out", help="folder for the figures (default: the run folder)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from condnet.engine.checkpoint import load_checkpoint
    from condnet.report.routing import plot_by_class, plot_training, routing_records, routing_table

    folder = Path(args.run_dir)
    records = routing_records(folder)
    out = Path(args.out) if args.out else folder
    out.mkdir(parents=True, exist_ok=True)
    names = (
        load_checkpoint(folder / "last.pt").get("class_names", [])
        if (folder / "last.pt").is_file()
        else []
    )
    print(routing_table(records))
    print(f"figure: {plot_by_class(records, out / 'routing-classes.png', names)}")
    if any(r["phase"] == "train" for r in records):
        print(f"figure: {plot_training(records, out / 'routing-training.png')}")
    return 0
