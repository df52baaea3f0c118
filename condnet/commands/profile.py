"""`condnet profile`: paper Table 4 and the complete account, as text or JSON."""

import argparse
import json

from condnet.commands.common import add_set_option, parse_model_overrides
from condnet.errors import CondnetError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="MACs and coefficients per layer (paper Table 4)")
    p.add_argument("--model", default="paper-standard", help="preset name (see `condnet models`)")
    add_set_option(
        p, "model.overrides.kernel_size=5 or model.overrides.widths=[16,24,40,80,160,320]"
    )
    p.add_argument("--resolution", type=int, default=56, help="input height and width (56)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from condnet.models import build_model
    from condnet.models.complexity import format_profile, profile

    if args.resolution < 1:
        raise CondnetError(f"--resolution: expected a positive integer, got {args.resolution}")
    overrides = parse_model_overrides(args.set)
    model = build_model(args.model, **overrides)
    name = args.model + "".join(f" {k}={v}" for k, v in overrides.items())
    prof = profile(model, args.resolution, name if overrides else None)
    print(json.dumps(prof.to_dict(), indent=2) if args.json else format_profile(prof))
    return 0
