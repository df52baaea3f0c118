"""The network as data: a frozen description (stem, stages, head) that the builder turns into
modules.

`NetSpec` validates itself on construction, so every spec that exists is buildable. Errors name
the offending field (``stages[2].kernel_size``) and what is allowed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from condnet.checks import check_value, did_you_mean
from condnet.errors import CondnetError
from condnet.models.blocks import BLOCKS, BlockOptions, block_uses, blocks_using
from condnet.models.condconv import ROUTING_ACTIVATIONS

ROUTINGS = ("block", "conv")


def _check_int(where: str, value: Any, minimum: int = 1) -> None:
    check_value(where, value, int, {"min": minimum})


def _check_choice(where: str, value: Any, allowed: Sequence[str]) -> None:
    check_value(where, value, str, {"choices": allowed})


def _check_kernel(where: str, value: Any) -> None:
    _check_int(where, value)
    if value % 2 == 0:
        raise CondnetError(f"{where}: expected an odd kernel size (1, 3, 5, ...), got {value}")


@dataclass(frozen=True)
class StemSpec:
    """The stem: conv k x k / stride, BN, activation."""

    channels: int = 16
    kernel_size: int = 3
    stride: int = 1

    def validate(self, where: str = "stem") -> None:
        _check_int(f"{where}.channels", self.channels)
        _check_kernel(f"{where}.kernel_size", self.kernel_size)
        _check_int(f"{where}.stride", self.stride)


@dataclass(frozen=True)
class StageSpec(BlockOptions):
    """`repeats` blocks of one kind; the first has `stride` and changes the width to `channels`.

    The block options (`BlockOptions`, keyword-only): expanded width Ne = expansion * Ni; SE
    width = Ne // se_ratio; `routing`: one router per block, or one per conv;
    `routing_activation`: sigmoid as in the paper, or softmax. Each block kind uses some of them
    (its `options` in `condnet.models.blocks`: `se_ratio` for se and condconv, `num_experts` and
    the routing ones for condconv alone).
    """

    channels: int
    repeats: int
    stride: int = 1
    block: str = "standard"

    def validate(self, where: str = "stage") -> None:
        _check_int(f"{where}.channels", self.channels)
        _check_int(f"{where}.repeats", self.repeats)
        _check_int(f"{where}.stride", self.stride)
        _check_choice(f"{where}.block", self.block, sorted(BLOCKS))
        _check_int(f"{where}.expansion", self.expansion)
        _check_kernel(f"{where}.kernel_size", self.kernel_size)
        _check_int(f"{where}.se_ratio", self.se_ratio)
        _check_int(f"{where}.num_experts", self.num_experts)
        _check_choice(f"{where}.routing", self.routing, ROUTINGS)
        _check_choice(f"{where}.routing_activation", self.routing_activation, ROUTING_ACTIVATIONS)


@dataclass(frozen=True)
class HeadSpec:
    """The head conv (1x1, BN, activation) before pooling and the classifier."""

    channels: int = 1280

    def validate(self, where: str = "head") -> None:
        _check_int(f"{where}.channels", self.channels)


@dataclass(frozen=True)
class NetSpec:
    """A whole network: input channels, stem, stages, head and number of classes."""

    stages: tuple[StageSpec, ...]
    stem: StemSpec = field(default_factory=StemSpec)
    head: HeadSpec = field(default_factory=HeadSpec)
    in_channels: int = 3
    num_classes: int = 100

    def __post_init__(self) -> None:
        _check_int("in_channels", self.in_channels)
        _check_int("num_classes", self.num_classes)
        self.stem.validate()
        self.head.validate()
        if not self.stages:
            raise CondnetError("stages: expected at least one stage")
        for i, stage in enumerate(self.stages):
            stage.validate(f"stages[{i}]")
        for i, stage in enumerate(self.stages):
            previous = self.stem.channels if i == 0 else self.stages[i - 1].channels
            inner = stage.expansion * min(previous, stage.channels)
            if block_uses(stage.block, "se_ratio") and inner // stage.se_ratio < 1:
                raise CondnetError(
                    f"stages[{i}].se_ratio: must be at most the expanded width {inner}, "
                    f"got {stage.se_ratio}"
                )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NetSpec:
        """Rebuild a spec written by `to_dict` (checkpoints, weight files)."""
        try:
            return cls(
                stages=tuple(StageSpec(**s) for s in data["stages"]),
                stem=StemSpec(**data["stem"]),
                head=HeadSpec(**data["head"]),
                in_channels=data["in_channels"],
                num_classes=data["num_classes"],
            )
        except (KeyError, TypeError) as err:
            raise CondnetError(f"not a valid model spec: {err}") from None


# Overrides accepted by `with_overrides`: per-stage ones take one value or one per stage.
STAGE_KEYS = {
    "widths": "channels",
    "repeats": "repeats",
    "strides": "stride",
    "block": "block",
    "expansion": "expansion",
    "kernel_size": "kernel_size",
    "se_ratio": "se_ratio",
    "num_experts": "num_experts",
    "routing": "routing",
    "routing_activation": "routing_activation",
}
GLOBAL_KEYS = {
    "in_channels": ("in_channels",),
    "num_classes": ("num_classes",),
    "stem_channels": ("stem", "channels"),
    "stem_kernel_size": ("stem", "kernel_size"),
    "stem_stride": ("stem", "stride"),
    "head_channels": ("head", "channels"),
}
OVERRIDE_KEYS = tuple(sorted([*STAGE_KEYS, *GLOBAL_KEYS, "stages"]))
# The stage options that a block kind may use or ignore (every kind uses the others).
BLOCK_OPTIONS = (
    "expansion",
    "kernel_size",
    "se_ratio",
    "num_experts",
    "routing",
    "routing_activation",
)


def _per_stage(key: str, value: Any, num_stages: int) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != num_stages:
            raise CondnetError(
                f"{key}: expected one value or a list of {num_stages} (one per stage), "
                f"got {len(value)} values"
            )
        return list(value)
    return [value] * num_stages


def _replace_stages(spec: NetSpec, value: Any) -> NetSpec:
    if not isinstance(value, (list, tuple)) or not all(isinstance(s, Mapping) for s in value):
        raise CondnetError("stages: expected a list of mappings with keys of StageSpec")
    allowed = {f.name for f in dataclasses.fields(StageSpec)}
    for i, stage in enumerate(value):
        unknown = set(stage) - allowed
        if unknown:
            raise CondnetError(
                f"stages[{i}]: unknown key {sorted(unknown)[0]!r}; "
                f"{did_you_mean(sorted(unknown)[0], allowed)}allowed: {', '.join(sorted(allowed))}"
            )
        if "channels" not in stage or "repeats" not in stage:
            raise CondnetError(f"stages[{i}]: 'channels' and 'repeats' are required")
        block = stage.get("block", StageSpec.block)
        for key in BLOCK_OPTIONS:
            if key in stage and block in BLOCKS and not block_uses(block, key):
                raise CondnetError(f"stages[{i}].{key}: {_unused(key, [block])}")
    return dataclasses.replace(spec, stages=tuple(StageSpec(**s) for s in value))


def unused_overrides(spec: NetSpec, overrides: Mapping[str, Any]) -> list[str]:
    """The per-stage override keys that no block of `spec` uses (e.g. `num_experts` in a
    network of standard blocks)."""
    kinds = {stage.block for stage in spec.stages}
    return [
        key
        for key in overrides
        if STAGE_KEYS.get(key) in BLOCK_OPTIONS
        and not any(block_uses(kind, STAGE_KEYS[key]) for kind in kinds)
    ]


def _unused(option: str, kinds: Sequence[str]) -> str:
    users = ", ".join(blocks_using(option))
    return f"not used by block {', '.join(sorted(kinds))} (used by: {users})"


def with_overrides(spec: NetSpec, **overrides: Any) -> NetSpec:
    """Return `spec` with overrides applied, validated; unknown keys, and keys that no block
    of the result uses, raise `CondnetError`."""
    result = _apply(spec, overrides)
    unused = unused_overrides(result, overrides)
    if unused:
        kinds = {stage.block for stage in result.stages}
        raise CondnetError(f"{unused[0]}: {_unused(STAGE_KEYS[unused[0]], kinds)}")
    return result


def _apply(spec: NetSpec, overrides: Mapping[str, Any]) -> NetSpec:
    for key in overrides:
        if key not in OVERRIDE_KEYS:
            raise CondnetError(
                f"unknown model override {key!r}; {did_you_mean(key, OVERRIDE_KEYS)}"
                f"allowed: {', '.join(OVERRIDE_KEYS)}"
            )
    if "stages" in overrides:
        spec = _replace_stages(spec, overrides["stages"])
    stages = [dataclasses.asdict(s) for s in spec.stages]
    for key, attr in STAGE_KEYS.items():
        if key in overrides:
            for stage, v in zip(stages, _per_stage(key, overrides[key], len(stages)), strict=True):
                stage[attr] = v
    data = spec.to_dict() | {"stages": stages}
    for key, path in GLOBAL_KEYS.items():
        if key in overrides:
            target = data
            for part in path[:-1]:
                target = target[part]
            target[path[-1]] = overrides[key]
    return NetSpec.from_dict(data)
