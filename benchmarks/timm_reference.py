"""The paper's network built from timm's own EfficientNet blocks: the reference we race.

timm is a benchmark-only dependency (`pip install -e '.[bench]'`); condnet never imports it.
"""

from __future__ import annotations

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
