"""Routing diagnostics of a CondConv network, per block: what its routers do, and what follows.

Validation, every epoch: the routing weights' mean and spread (over examples and experts, and
across examples per expert), the fractions below 0.05 and above 0.95, the entropy over experts
(of the weights normalised to sum to one, divided by log M: 1 when every expert weighs the
same), the mean weight per expert, and the mean routing weight per class.

Training, every `every` steps, on the step's batch: the same saturation figures, the ratio of
gradient norm to weight norm for the routers and for the CondConv experts (as the backward pass
gave them, before any cap of `train.routing_grad_clip`), the factor that cap then applied to
the routers' gradients (the smallest over the block's routers; 1 when it did not bind or no cap
is set), the norm of the per-example mixed kernel relative to the experts' (1 at
initialisation; 0 when every routing weight is 0), and the smallest and largest BN running
variance in the block.

Everything stays on the device until the epoch ends (one host copy per epoch).
`condnet.engine.routing_log.RoutingLog` appends the records to the run folder. The blocks are
found by `condnet.engine.routing_probes`, the figures computed by
`condnet.engine.routing_stats`.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from condnet.engine.routing_probes import BlockProbe, blocks_with_routing, probe
from condnet.engine.routing_stats import (
    example_figures,
    grad_to_weight,
    mixed_kernel_norms,
    routing_figures,
)
from condnet.models.condconv import Routing

VAL_KEYS = ("mean", "std", "example_std", "low", "high", "entropy")
TRAIN_KEYS = (
    "mean",
    "low",
    "high",
    "entropy",
    "grad_ratio_routing",
    "grad_ratio_experts",
    "kernel_norm_mean",
    "kernel_norm_min",
    "bn_var_min",
    "bn_var_max",
    "cap_factor",
)


class RoutingMonitor:
    """Collects the statistics above for every block of `model` that routes (see module doc).

    Forward hooks on the routers keep each one's last output; the trainer calls `train_step`
    after each backward pass (before any change to the gradients), `note_cap` once the routers'
    gradients are capped, and `observe_eval` after each validation batch.
    """

    def __init__(self, model: nn.Module, num_classes: int, every: int = 10) -> None:
        self.blocks = [probe(name, block) for name, block in blocks_with_routing(model)]
        self.num_experts = self.blocks[0].routers[0].fc.out_features if self.blocks else 1
        self.num_classes, self.every = num_classes, max(every, 1)
        self._hooks = [
            router.register_forward_hook(self._keeper(block, i))
            for block in self.blocks
            for i, router in enumerate(block.routers)
        ]
        self._train: list[tuple[int, Tensor]] = []
        self._val: list[dict[str, Tensor]] | None = None

    @staticmethod
    def _keeper(block: BlockProbe, index: int):
        def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
            block.outputs[index] = output.detach()

        return hook

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()

    # Training side ---------------------------------------------------------------------------

    def train_step(self, step: int) -> None:
        """After a backward pass, before any cap: sample the block statistics every `every`
        steps (the cap factor 1 until `note_cap` says otherwise)."""
        if step % self.every or not self.blocks:
            return
        rows = torch.stack([self._train_row(block) for block in self.blocks])
        self._train.append((step, torch.cat([rows, rows.new_ones(len(self.blocks), 1)], dim=1)))

    def note_cap(self, step: int, factors: dict[Routing, Tensor]) -> None:
        """The cap factor of each router at `step` (`RouterRates.after_backward`), recorded
        with that step's sample as its block's smallest; ignored when the step was not
        sampled."""
        if not factors or not self._train or self._train[-1][0] != step:
            return
        rows = self._train[-1][1]
        for i, block in enumerate(self.blocks):
            mine = [factors[r] for r in block.routers if r in factors]
            if mine:
                rows[i, -1] = torch.stack(mine).min().to(rows.device, rows.dtype)

    def _train_row(self, block: BlockProbe) -> Tensor:
        weights = block.weights()
        m = self.num_experts
        norms = torch.stack(
            [mixed_kernel_norms(conv, weights[:, i * m : (i + 1) * m]) for conv, i in block.convs]
        )
        variances = torch.cat([bn.running_var.detach().float() for bn in block.norms])
        router_params = [p for r in block.routers for p in r.parameters()]
        expert_params = [conv.weight for conv, _ in block.convs]
        device = weights.device
        return torch.cat(
            [
                routing_figures(weights, m),
                torch.stack(
                    [
                        grad_to_weight(router_params).to(device),
                        grad_to_weight(expert_params).to(device),
                        norms.mean(),
                        norms.min(),
                        variances.min().to(device),
                        variances.max().to(device),
                    ]
                ),
            ]
        )

    # Validation side -------------------------------------------------------------------------

    def start_eval(self) -> None:
        self._val = []
        for block in self.blocks:
            width = len(block.routers) * self.num_experts
            device = block.routers[0].fc.weight.device
            zeros = partial(torch.zeros, device=device, dtype=torch.float64)
            self._val.append(
                {
                    "sum": zeros(width),
                    "squares": zeros(width),
                    "figures": zeros(4),  # summed per example
                    "per_class": zeros(self.num_classes, width),
                    "class_count": zeros(self.num_classes),
                }
            )

    def observe_eval(self, labels: Tensor) -> None:
        """After a validation forward pass: add its routing weights (rows labelled < 0 count
        nowhere). Masks and `index_add_` rather than boolean indexing or `bincount`, so that
        nothing waits for the device."""
        if self._val is None:
            return
        mask = (labels >= 0).double()
        index = labels.clamp_min(0)
        for block, acc in zip(self.blocks, self._val, strict=True):
            raw = block.weights()
            weights = raw.double() * mask[:, None]
            acc["sum"] += weights.sum(0)
            acc["squares"] += (weights * weights).sum(0)
            figures = example_figures(raw, self.num_experts).double()
            acc["figures"] += (figures * mask[:, None]).sum(0)
            acc["per_class"].index_add_(0, index, weights)
            acc["class_count"].index_add_(0, index, mask)

    def epoch_records(self, epoch: int, reduce: Any = None) -> list[dict[str, Any]]:
        """The epoch's training samples and validation summary as JSON-ready records (`epoch`
        as recorded: counted from 1 in a run).

        `reduce(tensor)` sums a validation accumulator over processes (DDP); the one host copy
        of the epoch happens here.
        """
        records = [
            {
                "phase": "train",
                "epoch": epoch,
                "step": step,
                "blocks": self._block_dicts(rows.tolist(), TRAIN_KEYS),
            }
            for step, rows in self._train
        ]
        self._train = []
        if self._val is not None:
            records.append(self._val_record(epoch, reduce))
            self._val = None
        return records

    def _val_record(self, epoch: int, reduce: Any) -> dict[str, Any]:
        blocks, per_class = [], []
        for block, acc in zip(self.blocks, self._val, strict=True):
            if reduce is not None:
                acc = {key: reduce(value) for key, value in acc.items()}
            count = acc["class_count"].sum().clamp_min(1)
            means = acc["sum"] / count
            example_std = (acc["squares"] / count - means**2).clamp_min(0).sqrt()
            overall_mean = means.mean()
            overall_std = ((acc["squares"] / count).mean() - overall_mean**2).clamp_min(0).sqrt()
            figures = (acc["figures"] / count).tolist()
            blocks.append(
                {
                    "block": block.name,
                    "mean": overall_mean.item(),
                    "std": overall_std.item(),
                    "example_std": example_std.mean().item(),
                    "low": figures[1],
                    "high": figures[2],
                    "entropy": figures[3],
                    "expert_means": means.tolist(),
                }
            )
            per_class.append((acc["per_class"] / acc["class_count"][:, None].clamp_min(1)).tolist())
        return {"phase": "val", "epoch": epoch, "blocks": blocks, "per_class": per_class}

    def _block_dicts(self, rows: list[list[float]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
        return [
            {"block": block.name, **dict(zip(keys, row, strict=True))}
            for block, row in zip(self.blocks, rows, strict=True)
        ]
