"""`condnet bench`: median latency and throughput per backend and batch size."""

import argparse
import json

from condnet.choices import BENCH_BACKENDS, DEVICES, FORMULATIONS
from condnet.commands.common import add_set_option, parse_model_overrides, short_assignments
from condnet.errors import CondnetError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="inference latency and throughput per backend and batch")
    p.add_argument("--model", default="paper-standard", help="preset name (see `condnet models`)")
    add_set_option(p, "model.overrides.num_experts=8")
    p.add_argument("--batch", default="1,64", help="comma-separated batch sizes (1,64)")
    p.add_argument(
        "--backend",
        default="eager,fused,onnxruntime",
        help=f"comma-separated, from {','.join(BENCH_BACKENDS)} (eager,fused,onnxruntime)",
    )
    p.add_argument("--device", default="cpu", choices=DEVICES, help="cpu or cuda (cpu)")
    p.add_argument(
        "--formulation",
        default="auto",
        choices=FORMULATIONS,
        help="CondConv formulation for the PyTorch backends (auto)",
    )
    p.add_argument("--iters", type=int, default=20, help="timed runs per measurement (20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs before them (5)")
    p.add_argument("--resolution", type=int, default=56, help="input height and width (56)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from condnet.deploy.bench import bench, format_timings, timings_to_dict
    from condnet.models import build_model
    from condnet.models.condconv import set_formulation

    batches = _int_list("--batch", args.batch)
    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    model = build_model(args.model, **parse_model_overrides(args.set))
    set_formulation(model, args.formulation)
    timings = bench(
        model,
        backends=backends,
        batches=batches,
        device=args.device,
        iters=args.iters,
        warmup=args.warmup,
        resolution=args.resolution,
    )
    setting = {
        "model": args.model,
        "overrides": short_assignments(args.set),
        "device": args.device,
        "threads": torch.get_num_threads(),
        "formulation": args.formulation,
        "resolution": args.resolution,
        "iters": args.iters,
        "warmup": args.warmup,
    }
    if args.json:
        print(json.dumps(setting | {"results": timings_to_dict(timings)}, indent=2))
    else:
        header = (
            f"{args.model}{''.join(' ' + s for s in setting['overrides'])} on {args.device} "
            f"({setting['threads']} threads), {args.resolution}x{args.resolution}, "
            f"median of {args.iters} runs after {args.warmup} warm-up runs"
        )
        print(format_timings(timings, header))
    return 0


def _int_list(option: str, text: str) -> list[int]:
    try:
        return [int(item) for item in text.split(",")]
    except ValueError:
        raise CondnetError(f"{option}: expected comma-separated integers, got {text!r}") from None
