"""Run configuration: dataclasses loaded from YAML plus dotted `key=value` overrides.

Validated once, on load: every error is one line naming the key and what is allowed. The
resolved configuration is saved next to every result and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from condnet.checks import MODEL_OVERRIDES, check_value, did_you_mean
from condnet.errors import CondnetError
from condnet.files import write_atomically
from condnet.models import get_spec
from condnet.models.net import EXPERT_INITS, ROUTER_INITS
from condnet.paper import IMAGENET_MEAN, IMAGENET_STD

SOURCES = ("imagefolder", "imagenet64", "cifar10", "cifar100", "fashion-mnist", "synthetic")
PIPELINES = ("torchvision", "tensor")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _spec(default: Any = dataclasses.MISSING, **rules: Any) -> Any:
    """A field with validation rules: min, max (inclusive), gt (exclusive), choices, length."""
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata=rules)
    return field(default=default, metadata=rules)


@dataclass
class ModelConfig:
    name: str = _spec("paper-standard")
    overrides: dict = _spec({})  # NetSpec overrides (num_classes comes from the data)


@dataclass
class DataConfig:
    source: str = _spec("imagefolder", choices=SOURCES)
    root: str | None = _spec(None)  # default per source (fashion-mnist: Debian's folder)
    classes: str | None = _spec(None)  # imagenet64: class-list file
    download: bool = _spec(False)  # cifar: fetch when missing (needs a network)
    train_subset: int = _spec(0, min=0)  # 0: all; else this many images, class-balanced
    val_subset: int = _spec(0, min=0)
    # A plain folder of class folders (imagefolder without train/ and val/) has no validation
    # split: this share of each class is held out for it, chosen by run.seed.
    val_fraction: float = _spec(0.1, gt=0.0, max=0.5)
    resize: int = _spec(64, min=1)  # eval: short side resized to this ...
    crop: int = _spec(56, min=1)  # ... then center crop; train: random resized crop size
    scale: list = _spec([0.08, 1.0], length=2, gt=0.0, max=1.0)
    ratio: list = _spec([3 / 4, 4 / 3], length=2, gt=0.0)
    hflip: float = _spec(0.5, min=0.0, max=1.0)
    mean: list = _spec(list(IMAGENET_MEAN), length=3)
    std: list = _spec(list(IMAGENET_STD), length=3, gt=0.0)
    num_workers: int = _spec(0, min=0)
    on_bad_image: str = _spec("skip", choices=("skip", "error"))  # unreadable files
    pipeline: str = _spec("torchvision", choices=PIPELINES)  # tensor: uint8 cache, batch transforms
    cache: str | None = _spec(None)  # tensor pipeline's cache folder (None: the user cache dir)
    synthetic_images: int = _spec(512, min=1)  # synthetic: training images (val: a quarter)
    synthetic_classes: int = _spec(10, min=2)
    synthetic_size: int = _spec(32, min=4)


@dataclass
class TrainConfig:
    epochs: int = _spec(55, min=1)
    batch_size: int = _spec(256, min=1)
    eval_batch_size: int = _spec(256, min=1)
    lr_start: float = _spec(0.002, min=0.0)  # linear warm-up from here ...
    lr_peak: float = _spec(0.2, gt=0.0)  # ... to here over `warmup_epochs`,
    lr_final: float = _spec(0.0002, min=0.0)  # then half-cosine down to this at the last epoch
    warmup_epochs: int = _spec(5, min=0)
    lr_per_step: bool = _spec(False)  # paper: set once per epoch; true: every step
    momentum: float = _spec(0.9, min=0.0, max=1.0)
    nesterov: bool = _spec(True)
    weight_decay: float = _spec(5e-5, min=0.0)
    label_smoothing: float = _spec(0.0, min=0.0, max=1.0)
    epoch_eval_subset: int = _spec(0, min=0)  # N: epochs before the last on N val images (0: all)
    # CondConv routers' rate multiplier (1: the paper's text; README: Training block C).
    routing_lr_scale: float = _spec(0.1, min=0.0)
    # Routers' gradient/weight at most this x their experts' (0: off, the paper's text).
    routing_grad_clip: float = _spec(0.0, min=0.0)
    # CondConv routers' initial weights: small (N(0, 0.01)) or reference (TF/timm's uniform).
    routing_init: str = _spec("small", choices=ROUTER_INITS)
    # CondConv experts' initial weights: independent draws (the paper) or one draw shared.
    expert_init: str = _spec("independent", choices=EXPERT_INITS)
    routing_lr_auto: bool = _spec(False)  # routers' rates matched to their experts' at step 1
    routing_warmup_epochs: float = _spec(0.0, min=0.0)  # routers' rate ramps from 0 over these
    routing_temperature: float = _spec(1.0, min=1.0)  # routers' initial temperature ...
    routing_anneal_epochs: float = _spec(0.0, min=0.0)  # ... down to 1 over these epochs
    # Start from these weights (a checkpoint or .safetensors file; "" for none) ...
    init_weights: str = _spec("")
    # ... keeping their classifier, or a new one (for another class count).
    init_classifier: str = _spec("keep", choices=("keep", "new"))


@dataclass
class RunConfig:
    seed: int = _spec(0, min=0)
    device: str = _spec("auto", choices=("auto", "cpu", "cuda"))
    deterministic: bool = _spec(False)
    amp: bool = _spec(True)  # bf16 autocast, on CUDA only
    channels_last: bool = _spec(True)
    compile: bool = _spec(False)
    compile_mode: str = _spec("default", choices=COMPILE_MODES)  # reduce-overhead: CUDA graphs
    threads: int = _spec(0, min=0)  # CPU threads for torch (0: torch's default)
    # CondConv diagnostics: steps between samples (0: off).
    routing_stats_every: int = _spec(10, min=0)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        """Write the config as YAML, atomically (a crash leaves the previous file or this one)."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        write_atomically(path, lambda tmp: Path(tmp).write_text(text))


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise CondnetError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise CondnetError(
                f"unknown key '{prefix}{key}'; {did_you_mean(str(key), fields, prefix)}allowed: "
                f"{', '.join(prefix + f for f in fields)}"
            )
    values = {}
    for name, f in fields.items():
        if name not in data:
            continue
        if dataclasses.is_dataclass(hints[name]):
            values[name] = _build(hints[name], data[name], f"{prefix}{name}.")
        else:
            values[name] = check_value(prefix + name, data[name], hints[name], f.metadata)
    return cls(**values)


def _check_consistency(cfg: Config) -> None:
    if "num_classes" in cfg.model.overrides:
        raise CondnetError("model.overrides.num_classes: not allowed, the data sets the classes")
    try:
        get_spec(cfg.model.name, **cfg.model.overrides)
    except CondnetError as err:
        raise CondnetError(f"model: {err}") from None
    if cfg.data.crop > cfg.data.resize:
        raise CondnetError(
            f"data.crop: must be at most data.resize ({cfg.data.resize}), got {cfg.data.crop}"
        )
    low, high = cfg.data.scale
    if low > high:
        raise CondnetError(
            f"data.scale: expected [low, high] with low <= high, got {cfg.data.scale}"
        )
    if cfg.data.ratio[0] > cfg.data.ratio[1]:
        raise CondnetError(
            f"data.ratio: expected [low, high] with low <= high, got {cfg.data.ratio}"
        )
    if cfg.train.warmup_epochs >= cfg.train.epochs and cfg.train.epochs > 1:
        raise CondnetError(
            f"train.warmup_epochs: must be below train.epochs ({cfg.train.epochs}), "
            f"got {cfg.train.warmup_epochs}"
        )


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    target = data
    for part in parts[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise CondnetError(f"{key}: {part!r} is not a section")
    target[parts[-1]] = value


def from_dict(data: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> Config:
    """Build and validate a Config from nested data and dotted overrides (``train.epochs``)."""
    cfg = _build(Config, merge_overrides(data, overrides), "")
    _check_consistency(cfg)
    return cfg


def merge_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """A deep copy of nested `data` with the dotted `overrides` set in it, not yet validated."""
    data = yaml.safe_load(yaml.safe_dump(dict(data)))  # deep copy of plain data
    for key, value in (overrides or {}).items():
        if key.startswith(MODEL_OVERRIDES):
            data.setdefault("model", {}).setdefault("overrides", {})[
                key.removeprefix(MODEL_OVERRIDES)
            ] = value
        else:
            _set_dotted(data, key, value)
    return data


def load_config(path: str | Path | None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read a YAML config (None: the defaults, i.e. the paper recipe) and apply overrides."""
    return from_dict(read_config_file(path), overrides)


def read_config_file(path: str | Path | None, _seen: tuple[Path, ...] = ()) -> Any:
    """The YAML data of a config file, not yet validated (None: no file, no settings).

    A file may start from another: ``base: FILE`` (relative to the file) reads that one first
    and then sets this file's values over it, section by section (a key this file gives
    replaces the base's; a section it leaves out is the base's)."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise CondnetError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)  # where the parser stopped, 0-based
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise CondnetError(f"{where}: not valid YAML: {problem}") from None
    if not isinstance(data, dict) or "base" not in data:
        return data
    base = path.parent / str(data.pop("base"))
    if base.resolve() in _seen:
        raise CondnetError(f"{path}: base {base} leads back to itself")
    return _deep_merge(read_config_file(base, (*_seen, path.resolve())), data)


def _deep_merge(base: Any, data: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `data` set over it, nested mappings merged key by key."""
    merged = dict(base) if isinstance(base, Mapping) else {}
    for key, value in data.items():
        inner = merged.get(key)
        both = isinstance(value, Mapping) and isinstance(inner, Mapping)
        merged[key] = _deep_merge(inner, value) if both else value
    return merged
