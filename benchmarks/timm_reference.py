"""The paper's network built from timm's own EfficientNet blocks: the reference we race.

timm is a benchmark-only dependency (`pip install -e '.[bench]'`); condnet never imports it.
"""

from __future__ import annotations

import torch
from torch import nn

# Paper Table 1 in timm's block-string language; `{se}` is "", "_se0.25" or "_se0.25_cc4".
ARCH = (
    ("ir_r1_k3_s1_e4_c16{se}",),
    ("ir_r2_k3_s1_e4_c24{se}",),
    ("ir_r3_k3_s2_e4_c40{se}",),
    ("ir_r4_k3_s2_e4_c80{se}",),
    ("ir_r5_k3_s2_e4_c160{se}", "ir_r1_k3_s1_e4_c320{se}"),
)
SUFFIX = {"standard": "", "se": "_se0.25", "condconv": "_se0.25_cc4"}


def _se_from_expanded(channels: int, rd_ratio: float = 0.25, **kwargs) -> nn.Module:
    """timm's SqueezeExcite with its width from the expanded channels (timm's builder would
    divide the ratio by the expansion; the paper reduces the expanded width by 4)."""
    from timm.models._efficientnet_blocks import SqueezeExcite

    return SqueezeExcite(channels, rd_ratio=0.25, **kwargs)


def build_timm(block: str, num_classes: int = 100) -> nn.Module:
    """timm's EfficientNet for `block` in ("standard", "se", "condconv"), stem stride 1."""
    from timm.models._efficientnet_builder import decode_arch_def
    from timm.models.efficientnet import EfficientNet

    arch = [[s.format(se=SUFFIX[block]) for s in stage] for stage in ARCH]
    model = EfficientNet(
        decode_arch_def(arch),
        num_classes=num_classes,
        num_features=1280,
        stem_size=16,
        fix_stem=True,
        act_layer=nn.ReLU,
        se_layer=_se_from_expanded,
    )
    model.conv_stem.stride = (1, 1)  # the paper's stem keeps 64 px (56 px crops) at stride 1
    return model


# The same layers under timm's names: per block (InvertedResidual, CondConvResidual) ...
BLOCK_NAMES = {
    "expand.conv": "conv_pw",
    "expand.bn": "bn1",
    "depthwise.conv": "conv_dw",
    "depthwise.bn": "bn2",
    "se.fc1": "se.conv_reduce",
    "se.fc2": "se.conv_expand",
    "project.conv": "conv_pwl",
    "project.bn": "bn3",
    "routing.fc": "routing_fn",
}
# ... and around the blocks.
OUTER_NAMES = {
    "stem.conv": "conv_stem",
    "stem.bn": "bn1",
    "head.conv": "conv_head",
    "head.bn": "bn2",
    "classifier": "classifier",
}


def timm_names(model: nn.Module, reference: nn.Module) -> dict[str, str]:
    """condnet state-dict key -> timm's key for the same tensor, for `model` (a CondNet) and
    `reference` (`build_timm` of the same block). Blocks are paired in order: timm nests them
    in its own stages (the paper's last two stages are one of timm's)."""
    ours = [f"stages.{s}.{b}." for s, stage in enumerate(model.stages) for b in range(len(stage))]
    theirs = [
        f"blocks.{s}.{b}." for s, stage in enumerate(reference.blocks) for b in range(len(stage))
    ]
    blocks = dict(zip(ours, theirs, strict=True))
    names = {}
    for key in model.state_dict():
        if key.endswith("routing.temperature"):  # condnet's annealing buffer; timm has none
            continue
        layer, _, tensor = key.rpartition(".")
        prefix = next((p for p in blocks if key.startswith(p)), "")
        inner = BLOCK_NAMES if prefix else OUTER_NAMES
        names[key] = f"{blocks.get(prefix, '')}{inner[layer[len(prefix) :]]}.{tensor}"
    return names


@torch.no_grad()
def copy_condnet_weights(model: nn.Module, reference: nn.Module) -> nn.Module:
    """Load `model`'s weights and BN statistics (a CondNet) into `reference` (`build_timm` of the
    same block), reshaped to timm's layouts (CondConv experts flattened, SE linears as 1x1
    convs); returns `reference`. Every tensor of either side is used: a missing or extra one
    raises. The routers' temperatures must be 1 (timm's routing has no temperature)."""
    state = model.state_dict()
    temperatures = [v for k, v in state.items() if k.endswith("routing.temperature")]
    if any(t.item() != 1 for t in temperatures):
        raise ValueError("timm's CondConv routing has no temperature: it must be 1")
    shapes = {k: v.shape for k, v in reference.state_dict().items()}
    mapped = {
        theirs: state[ours].reshape(shapes[theirs])
        for ours, theirs in timm_names(model, reference).items()
    }
    reference.load_state_dict(mapped, strict=True)
    return reference
