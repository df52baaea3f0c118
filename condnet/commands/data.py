"""`condnet data`: the paper's 64-px layout from ImageNet, and the tensor pipeline's cache."""

import argparse
import sys
from pathlib import Path

from condnet.commands.common import add_set_option, parse_assignments


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="data preparation")
    tasks = p.add_subparsers(dest="task", required=True, metavar="TASK")
    q = tasks.add_parser("prepare-imagenet", help="SRC/{train,val}/<class> -> 64-px copies in DST")
    q.add_argument("src", type=Path, help="ImageNet root with train/ and val/ class folders")
    q.add_argument("dst", type=Path, help="output root (the imagefolder layout)")
    q.add_argument("--classes", type=Path, required=True, help="class folder names, one a line")
    q.add_argument("--size", type=int, default=64, help="short side in pixels (64)")
    q.add_argument("--workers", type=int, default=0, help="processes (0: one per CPU)")
    q.set_defaults(run=run_prepare)
    c = tasks.add_parser("cache", help="decode a config's data into the tensor pipeline's cache")
    c.add_argument("--config", help="YAML config (default: the paper recipe)")
    add_set_option(c, "data.root=/data/in100 data.num_workers=8")
    c.set_defaults(run=run_cache)


def run_prepare(args: argparse.Namespace) -> int:
    from condnet.data.prepare import prepare_imagenet

    counts = prepare_imagenet(
        args.src, args.dst, args.classes, workers=args.workers, size=args.size
    )
    print(
        f"written {counts['written']}, already there {counts['skipped']}, failed {counts['failed']}"
    )
    return 1 if counts["failed"] else 0


def run_cache(args: argparse.Namespace) -> int:
    from condnet.config import load_config
    from condnet.data.datasets import build_caches  # brings in torch only when needed

    cfg = load_config(args.config, parse_assignments(args.set))
    for name, (folder, cached) in build_caches(cfg, progress=sys.stderr.isatty()).items():
        print(
            f"{name}: {len(cached)} images {cached.images.shape[1]}x{cached.images.shape[2]}, "
            f"{len(cached.skipped)} unreadable left out, in {folder}"
        )
    return 0
