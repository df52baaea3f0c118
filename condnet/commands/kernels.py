"""`condnet kernels`: build (or find) the compiled CondConv depthwise kernel for this machine."""

import argparse

from condnet.errors import CondnetError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "kernels",
        help="build the compiled CondConv depthwise kernel for this CPU kind (once, ~40 s)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from condnet.models import native  # brings in torch only when needed

    if not native.build():
        raise CondnetError(f"the kernel could not be built: {native.why_not()}")
    print(f"ready: {native.library()}")
    return 0
