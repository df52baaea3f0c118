"""Complexity (paper Table 4) counted from the real modules with forward hooks.

One forward pass of one example records, for every conv, CondConv and linear layer, the MACs
implied by its actual input and output shapes. Nothing here describes the network a second
time: rows are grouped from the model's own stages, and counts come from what ran.

Conventions (the paper's Table 4): MACs of a conv = Hout * Wout * Cout * (Cin / groups) * k * k;
filter coefficients = Cout * (Cin / groups) * k * k (times the experts for CondConv). BN,
activations, pooling, the SE rescale and additions are not counted as MACs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from condnet.models.condconv import CondConv2d
from condnet.models.net import CondNet
from condnet.models.presets import PRESETS
from condnet.paper import (
    TABLE4_NETWORK,
    TABLE4_PRINTED_ROWS,
    TABLE4_PRINTED_TOTAL,
    TABLE4_RESOLUTION,
)

KINDS = ("conv", "se", "routing", "mixing", "classifier", "bn")
KIND_TITLES = {
    "conv": "convolutions",
    "se": "squeeze-and-excitation",
    "routing": "CondConv routing",
    "mixing": "CondConv kernel mixing",
    "classifier": "classifier (linear + bias)",
    "bn": "batch norm (scale + shift)",
}


@dataclass
class Row:
    """One line of Table 4: a group of identical consecutive layers or blocks."""

    name: str
    repeat: int
    modules: list[str]
    macs: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    params: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    in_paper_total: bool = True

    def to_dict(self) -> dict[str, Any]:
        """The paper's columns (`macs`, `coefficients`: of the convolutions, or of the
        classifier) plus the rest."""
        main = "classifier" if not self.in_paper_total else "conv"
        return {
            "name": self.name,
            "repeat": self.repeat,
            "macs": self.macs[main],
            "coefficients": self.params[main],
            "in_paper_total": self.in_paper_total,
            "all_macs": sum(self.macs.values()),
            "all_params": sum(self.params.values()),
            "macs_by_kind": dict(self.macs),
            "params_by_kind": dict(self.params),
        }


@dataclass
class Profile:
    """Table 4 for one model at one input size, in the paper's convention and in full."""

    model: str
    input_size: tuple[int, int, int]
    rows: list[Row]
    total_params: int
    paper_network: bool = False  # the network of the paper's Table 4 at 3x56x56

    def kind_totals(self) -> dict[str, dict[str, int]]:
        return {
            kind: {
                "macs": sum(r.macs[kind] for r in self.rows),
                "params": sum(r.params[kind] for r in self.rows),
            }
            for kind in KINDS
        }

    def paper_total(self) -> dict[str, int]:
        kept = [r.to_dict() for r in self.rows if r.in_paper_total]
        return {
            "macs": sum(r["macs"] for r in kept),
            "coefficients": sum(r["coefficients"] for r in kept),
        }

    def full_total(self) -> dict[str, int]:
        return {"macs": sum(sum(r.macs.values()) for r in self.rows), "params": self.total_params}

    def notes(self) -> list[str]:
        notes = [
            "Paper convention: each row's MACs and filter coefficients are its convolutions "
            "only (summed over its repeats); the paper total leaves out the classifier row.",
            "BN, ReLU, pooling, the SE rescale and residual additions are not counted as MACs.",
        ]
        if self.kind_totals()["mixing"]["macs"]:
            notes.append(
                "CondConv rows: MACs are the per-example convolution MACs and coefficients are "
                "num_experts x the expert weights; routing and kernel mixing (num_experts "
                "multiply-adds per mixed weight) are separate lines of the complete account."
            )
        if self.paper_network:
            notes += _paper_differences(self)
        return notes

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "input_size": list(self.input_size),
            "rows": [r.to_dict() for r in self.rows],
            "paper_total": self.paper_total(),
            "full_total": self.full_total(),
            "by_kind": self.kind_totals(),
            "notes": self.notes(),
        }


def _paper_differences(prof: Profile) -> list[str]:
    rows = [r.to_dict() for r in prof.rows]
    shifted = [
        r["name"]
        for r, p in zip(rows, TABLE4_PRINTED_ROWS, strict=True)
        if r["coefficients"] != p[1]
    ]
    notes = []
    if shifted:
        notes.append(
            "The printed paper's 'Filter Cx' column differs on rows "
            + ", ".join(shifted)
            + ": its 4th and 5th values are swapped and from the 6th row on each row shows the "
            "value of the row above (7,008 appears twice), so the head conv's 409,600 stands on "
            "the classifier row."
        )
    macs, coefficients = TABLE4_PRINTED_TOTAL
    if prof.paper_total() == {"macs": macs, "coefficients": coefficients}:
        classifier = rows[-1]
        notes.append(
            f"The printed totals ({macs:,} MACs, {coefficients:,} coefficients) equal the sum over "
            f"the convolutions alone: the classifier ({classifier['macs']:,} MACs, "
            f"{classifier['coefficients']:,} coefficients), printed with 0 MACs, is not in them "
            "although a row names it."
        )
    return notes


def _row_layout(model: CondNet) -> list[Row]:
    """Rows in table order: stem, runs of identical blocks per stage, head conv, classifier."""
    stem, head = model.stem.conv, model.head.conv
    rows = [Row(f"stem conv {_kernel(stem)}/{stem.stride[0]}", 1, ["stem"])]
    for i, stage in enumerate(model.stages):
        runs: list[tuple[tuple, list[str]]] = []
        for j, block in enumerate(stage):
            key = (block.in_channels, block.out_channels, block.stride)
            if runs and runs[-1][0] == key:
                runs[-1][1].append(f"stages.{i}.{j}")
            else:
                runs.append((key, [f"stages.{i}.{j}"]))
        for (cin, cout, stride), names in runs:
            rows.append(Row(f"Block {cin}->{cout} S{stride}", len(names), names))
    rows.append(Row(f"head conv {_kernel(head)}/{head.stride[0]}", 1, ["head"]))
    rows.append(Row("pool + linear + bias", 1, ["classifier"], in_paper_total=False))
    return rows


def _kernel(conv: nn.Conv2d) -> str:
    return f"{conv.kernel_size[0]}x{conv.kernel_size[1]}"


def _linear_kind(name: str, modules: dict[str, nn.Module]) -> str:
    """'se' or 'routing' from the nearest enclosing module that declares it, else 'classifier'."""
    parts = name.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        kind = getattr(modules[".".join(parts[:depth])], "complexity_kind", None)
        if kind:
            return kind
    return "classifier"


def _count_layer(name: str, module: nn.Module, out: torch.Tensor, modules: dict) -> dict:
    """{kind: (macs, params)} for one layer call on a batch of one."""
    per_output = out[0].numel()
    if isinstance(module, CondConv2d):
        expert = module.weight[0]
        return {
            "conv": (per_output * expert[0].numel(), module.weight.numel()),
            "mixing": (module.weight.numel(), 0),
        }
    if isinstance(module, nn.Conv2d):
        return {"conv": (per_output * module.weight[0].numel(), module.weight.numel())}
    params = sum(p.numel() for p in module.parameters(recurse=False))
    return {_linear_kind(name, modules): (per_output * module.in_features, params)}


def count_layers(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, dict]:
    """Run one example through `model` and return {module name: {kind: (macs, params)}}."""
    modules = dict(model.named_modules())
    counts: dict[str, dict] = {}
    hooks = [
        module.register_forward_hook(
            lambda mod, args, out, name=name: counts.__setitem__(
                name, _count_layer(name, mod, out, modules)
            )
        )
        for name, module in modules.items()
        if isinstance(module, (nn.Conv2d, CondConv2d, nn.Linear))
    ]
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, *input_size, dtype=param.dtype, device=param.device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    for name, module in modules.items():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            counts[name] = {"bn": (0, sum(p.numel() for p in module.parameters()))}
    return counts


def profile(model: CondNet, resolution: int = 56, name: str | None = None) -> Profile:
    """Table 4 for `model` on a `resolution` x `resolution` input."""
    input_size = (model.spec.in_channels, resolution, resolution)
    counts = count_layers(model, input_size)
    rows = _row_layout(model)
    for row in rows:
        for layer, by_kind in counts.items():
            if any(layer == m or layer.startswith(m + ".") for m in row.modules):
                for kind, (macs, params) in by_kind.items():
                    row.macs[kind] += macs
                    row.params[kind] += params
    total = sum(p.numel() for p in model.parameters())
    preset = next((n for n, s in PRESETS.items() if s == model.spec), None)
    paper = preset == TABLE4_NETWORK and resolution == TABLE4_RESOLUTION
    return Profile(name or preset or "custom", input_size, rows, total, paper)


def format_profile(prof: Profile) -> str:
    """Table 4 in the paper's convention, then the complete account, then the notes."""
    c, h, w = prof.input_size
    paper_printed = prof.paper_network
    lines = [f"{prof.model}: input {c}x{h}x{w}", "", "Table 4 (paper convention)"]
    header = f"  {'operation':<24}{'repeat':>7}{'MACs':>15}{'filter coeff.':>15}"
    lines.append(header + ("   paper as printed (MACs / coeff.)" if paper_printed else ""))
    for i, row in enumerate(prof.rows):
        r = row.to_dict()
        line = f"  {r['name']:<24}{r['repeat']:>7}{r['macs']:>15,}{r['coefficients']:>15,}"
        if paper_printed:
            line += f"   {TABLE4_PRINTED_ROWS[i][0]:,} / {TABLE4_PRINTED_ROWS[i][1]:,}"
        lines.append(line + ("" if r["in_paper_total"] else "   (not in paper total)"))
    total = prof.paper_total()
    line = f"  {'paper total':<24}{'':>7}{total['macs']:>15,}{total['coefficients']:>15,}"
    if paper_printed:
        line += f"   {TABLE4_PRINTED_TOTAL[0]:,} / {TABLE4_PRINTED_TOTAL[1]:,}"
    lines += [line, "", "Complete account", f"  {'part':<30}{'MACs':>15}{'parameters':>15}"]
    for kind, t in prof.kind_totals().items():
        if t["macs"] or t["params"]:
            lines.append(f"  {KIND_TITLES[kind]:<30}{t['macs']:>15,}{t['params']:>15,}")
    full = prof.full_total()
    lines.append(f"  {'total':<30}{full['macs']:>15,}{full['params']:>15,}")
    lines += ["", "Notes"] + [f"  - {note}" for note in prof.notes()]
    return "\n".join(lines)
