"""`condnet data prepare-imagenet`: the paper's 64-px layout from a full ImageNet tree."""

import argparse
from pathlib import Path

from condnet.data.prepare import prepare_imagenet


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="data preparation")
    tasks = p.add_subparsers(dest="task", required=True, metavar="TASK")
    q = tasks.add_parser("prepare-imagenet", help="SRC/{train,val}/<class> -> 64-px copies in DST")
    q.add_argument("src", type=Path, help="ImageNet root with train/ and val/ class folders")
    q.add_argument("dst", type=Path, help="output root (the imagefolder layout)")
    q.add_argument("--classes", type=Path, required=True, help="class folder names, one a line")
    q.add_argument("--size", type=int, default=64, help="short side in pixels (64)")
    q.add_argument("--workers", type=int, default=0, help="processes (0: one per CPU)")
    q.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    counts = prepare_imagenet(args.src, args.dst, args.classes, args.workers, args.size)
    print(f"written {counts['written']}, already there {counts['skipped']}, failed {counts['failed']}")
    return 1 if counts["failed"] else 0
