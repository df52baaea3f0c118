"""The training loop: one path, with AMP, channels_last, compile and DDP as switches."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from condnet.config import Config, TrainConfig, from_dict
from condnet.data.datasets import load_splits
from condnet.data.transform_spec import TransformSpec
from condnet.engine import distributed
from condnet.engine.checkpoint import (
    checkpoint_state,
    load_checkpoint,
    load_initial_weights,
    save_checkpoint,
)
from condnet.engine.diagnostics import RoutingMonitor
from condnet.engine.evaluation import evaluate
from condnet.engine.loaders import Loader, eval_loader, eval_subset, split_data, train_loader
from condnet.engine.metrics import MetricsLog, truncate_metrics
from condnet.engine.progress import count_bad_images, progress_bar
from condnet.engine.resume import apply_optimizer_settings, check_resume, check_resume_overrides
from condnet.engine.routing_log import RoutingLog
from condnet.engine.routing_probes import has_routing
from condnet.engine.routing_rates import RouterRates
from condnet.engine.runtime import (
    Runtime,
    make_runtime,
    place_model,
    rng_state,
    seed_epoch,
    set_rng_state,
)
from condnet.engine.schedule import lr_at, routing_lr_factor, routing_temperature_at
from condnet.engine.signals import Interrupted, StopSignals
from condnet.errors import CondnetError, first_line
from condnet.models import CondNet, Routing, build_model
from condnet.models.net import init_experts, init_routers


@dataclass
class EpochContext:
    """What every epoch of a run uses, made once by `start_run`: the network (`model` bare, for
    checkpoints and schedules; `net` as it runs, under DDP and torch.compile when switched
    on), its optimizer, the routers' diagnostics and rates, and how the run computes."""

    model: CondNet
    net: nn.Module
    optimizer: torch.optim.Optimizer
    cfg: Config
    rt: Runtime
    monitor: RoutingMonitor | None = None
    routers: RouterRates | None = None
    progress: bool = False
    stop: StopSignals = field(default_factory=StopSignals)


def train_one_epoch(ctx: EpochContext, loader: Loader, epoch: int) -> tuple[float, int, int]:
    """One pass over `loader`. Returns (mean loss, images seen, images skipped).

    After each backward pass, the routing monitor samples routing statistics (every few steps,
    before any change to the gradients), then the router rates adjust the CondConv routers'
    gradients or rates and the monitor notes the cap they applied.
    """
    cfg, rt, model, optimizer = ctx.cfg, ctx.rt, ctx.net, ctx.optimizer
    model.train()
    loss_sum = torch.zeros((), device=rt.device)
    seen = skipped = 0
    bar = progress_bar(loader, len(loader), f"epoch {epoch + 1}/{cfg.train.epochs}", ctx.progress)
    for step, (images, labels, bad) in enumerate(bar):
        ctx.stop.check(epoch, step)
        _step_schedule(ctx, epoch + step / len(loader))
        skipped += count_bad_images(bad, cfg.data.on_bad_image)
        if labels.numel() == 0:
            continue
        images, labels = rt.to_device(images, labels)
        with rt.autocast():
            loss = F.cross_entropy(model(images), labels, label_smoothing=cfg.train.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _after_backward(ctx, step)
        optimizer.step()
        loss_sum += loss.detach() * labels.shape[0]
        seen += labels.shape[0]
        if ctx.progress and step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")  # a sync, only when a person watches
    # Sum over ranks and copy to the host: the epoch's one sync point (the counts are filled
    # in on the device, not copied there, which would be a blocking copy of its own).
    counts = [torch.full((), float(n), device=rt.device) for n in (seen, skipped)]
    totals = distributed.sum_across(torch.stack([loss_sum, *counts]), rt.dist)
    loss_total, seen_total, skipped_total = totals.tolist()
    return loss_total / max(seen_total, 1), int(seen_total), int(skipped_total)


def _step_schedule(ctx: EpochContext, epoch: float) -> None:
    """Rates per step when `train.lr_per_step`; the temperature anneals every step regardless."""
    if ctx.cfg.train.lr_per_step:
        apply_schedule(ctx.net, ctx.optimizer, epoch, ctx.cfg.train)
    elif ctx.cfg.train.routing_anneal_epochs:
        set_temperature(ctx.net, routing_temperature_at(epoch, ctx.cfg.train))


def _after_backward(ctx: EpochContext, step: int) -> None:
    """The monitor samples the gradients as computed, then the router rates cap them."""
    if ctx.monitor is not None:
        ctx.monitor.train_step(step)
    if ctx.routers is not None:
        factors = ctx.routers.after_backward(ctx.optimizer)
        if ctx.monitor is not None:
            ctx.monitor.note_cap(step, factors)


def set_lr(optimizer: torch.optim.Optimizer, lr: float, routing_factor: float = 1.0) -> None:
    """`lr` times each group's `lr_scale` (and `routing_factor` for the routers' group)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"] * (routing_factor if group.get("routing") else 1.0)


def apply_schedule(
    model: nn.Module, optimizer: torch.optim.Optimizer, epoch: float, cfg: TrainConfig
) -> float:
    """Set the learning rates and the routers' temperature for (fractional) `epoch`; returns
    the base learning rate."""
    lr = lr_at(epoch, cfg)
    set_lr(optimizer, lr, routing_lr_factor(epoch, cfg))
    set_temperature(model, routing_temperature_at(epoch, cfg))
    return lr


def set_temperature(model: nn.Module, temperature: float) -> None:
    """Every CondConv router's temperature."""
    for module in model.modules():
        if isinstance(module, Routing):
            module.temperature.fill_(temperature)


def build_network(cfg: Config, num_classes: int) -> CondNet:
    """The configured network, its CondConv routers and experts initialised per
    `train.routing_init` and `train.expert_init` (the builder draws `small` and `independent`:
    those draw nothing more), then loaded from `train.init_weights` when one is given."""
    model = build_model(cfg.model.name, num_classes=num_classes, **cfg.model.overrides)
    if cfg.train.routing_init != "small":
        init_routers(model, cfg.train.routing_init)
    if cfg.train.expert_init != "independent":
        init_experts(model, cfg.train.expert_init)
    if cfg.train.init_weights:
        load_initial_weights(model, cfg.train.init_weights, cfg.train.init_classifier == "new")
    return model


def make_optimizer(model: nn.Module, cfg: Config, fused: bool = False) -> torch.optim.Optimizer:
    """SGD; each CondConv router forms a group of its own, whose rate is scaled by
    `train.routing_lr_scale` (a router's gradient sums over whole kernels, so it is far larger).

    `fused`: one fused kernel for the whole update (the trainer's choice on CUDA); else the
    per-parameter loop, whose CPU results the resume tests pin down bit for bit.
    """
    t = cfg.train
    routers = [m for m in model.modules() if isinstance(m, Routing)]
    routing = {id(p) for m in routers for p in m.parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in routing], "routing": False}]
    groups += [{"params": list(m.parameters()), "routing": True} for m in routers]
    groups = [g for g in groups if g["params"]]
    optimizer = torch.optim.SGD(
        groups,
        lr=t.lr_start,
        momentum=t.momentum,
        fused=fused or None,
        foreach=None if fused else False,
        nesterov=t.nesterov and t.momentum > 0,
        weight_decay=t.weight_decay,
    )
    apply_optimizer_settings(optimizer, t)
    return optimizer


def _resume_state(out: Path, cfg: Config, announce: bool) -> tuple[dict[str, Any], list]:
    """The checkpoint to resume, once `cfg` is checked against the run's settings, and the
    record of settings changed on resume, this run's changes added (`announce`d on stderr)."""
    state = load_checkpoint(out / "last.pt")
    changes = check_resume(from_dict(state["config"]), cfg)
    resumes = list(state.get("resumes", []))
    if changes:
        first = state["epoch"] + 1  # the first epoch this run trains, counted from 1
        resumes.append({"epoch": first, "changes": {k: list(v) for k, v in changes.items()}})
        if announce:
            listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items())
            print(f"resuming at epoch {first} with changed settings: {listed}", file=sys.stderr)
    return state, resumes


def _check_classes(state: dict[str, Any], names: list[str]) -> None:
    """The data a run resumes on (`data.root` may have moved) must have the run's classes."""
    theirs = list(state["class_names"])
    if list(names) != theirs:
        raise CondnetError(
            f"data: its {len(names)} classes are not the checkpoint's {len(theirs)} "
            "(or not in the same order); resume with the data the run started with"
        )


def resume_config(out: Path, overrides: dict[str, Any] | None = None) -> Config:
    """The configuration a run in `out` was started with, plus `overrides`."""
    state = load_checkpoint(out / "last.pt")
    check_resume_overrides(state["config"], overrides or {})
    return from_dict(state["config"], overrides)


def _log_line(record: dict[str, Any], epochs: int) -> str:
    return (
        f"epoch {record['epoch']}/{epochs}  lr {record['lr']:.5f}  "
        f"train_loss {record['train_loss']:.4f}  val_loss {record['val_loss']:.4f}  "
        f"top1 {record['val_top1']:.2f}  top5 {record['val_top5']:.2f}  "
        f"({record['epoch_seconds']:.1f} s, {record['images_per_second']:.0f} img/s)"
    )


def train(
    cfg: Config,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool | None = None,
    stop_after: int | None = None,
) -> list[dict]:
    """Train per `cfg`, writing metrics and checkpoints to `out`; returns the metrics records.

    `stop_after` ends the run after that many epochs in all (resumable, schedule unchanged).
    SIGINT or SIGTERM stops it after the current step with `last.pt` resumable (under DDP,
    a signal to any rank stops every rank before the same step).
    """
    out = Path(out)
    rt = make_runtime(cfg.run)
    progress = sys.stderr.isatty() if progress is None else progress
    _check_start(cfg, rt, out, resume)
    state, resumes = _resume_state(out, cfg, rt.dist.main) if resume else (None, [])
    splits = dict(zip(("train", "val"), load_splits(cfg.data, cfg.run.seed), strict=True))
    class_names = splits["train"].class_names
    if state is not None:
        _check_classes(state, class_names)
    data = {
        name: split_data(cfg, rt, split, name, progress=progress) for name, split in splits.items()
    }
    ctx = start_run(cfg, rt, len(class_names), state=state, source=out / "last.pt")
    ctx.progress = progress
    start, metrics, best = _progress_so_far(state)
    save = _saver(out, ctx, class_names=class_names, resumes=resumes)
    if rt.dist.main:
        _prepare_folder(out, cfg, start)
    if state is None:
        save(-1, metrics, best, best=False)  # resumable from the very start
    log = MetricsLog(out) if rt.dist.main else None
    every_epoch, last_epoch = _val_loaders(cfg, data["val"], rt)
    end = cfg.train.epochs if stop_after is None else min(stop_after, cfg.train.epochs)
    try:
        with StopSignals(rt.dist) as ctx.stop:
            for epoch in range(start, end):
                final = epoch == cfg.train.epochs - 1
                record, routing = run_epoch(
                    ctx, epoch, data["train"], last_epoch if final else every_epoch
                )
                metrics.append(record)
                if log is not None:
                    log.append(record)
                    RoutingLog(out).append(routing)
                    print(_log_line(record, cfg.train.epochs), flush=True)
                save(epoch, metrics, max(best, record["val_top1"]), best=record["val_top1"] > best)
                best = max(best, record["val_top1"])
                distributed.barrier(rt.dist)
    except Interrupted as err:
        _say_interrupted(err, out, rt)
        raise
    finally:
        if log is not None:
            log.close()
        distributed.teardown(rt.dist)
    return metrics


def _check_start(cfg: Config, rt: Runtime, out: Path, resume: bool) -> None:
    if cfg.train.batch_size % rt.dist.world:
        raise CondnetError(f"train.batch_size: must be divisible by the {rt.dist.world} processes")
    if not resume and (out / "last.pt").exists():
        raise CondnetError(
            f"{out} already holds a run; resume it with --resume or choose another --out"
        )
    weights = cfg.train.init_weights
    if weights and not resume and not Path(weights).is_file():  # before any data is read
        raise CondnetError(f"train.init_weights: file not found: {weights}")


def _progress_so_far(state: dict[str, Any] | None) -> tuple[int, list, float]:
    """(index of the first epoch to train, metrics records, best top-1) of a resumed run, or
    of a new one; a checkpoint's `epoch` counts the epochs it finished."""
    if state is None:
        return 0, [], -math.inf
    return state["epoch"], state["metrics"], state["best_top1"]


def _prepare_folder(out: Path, cfg: Config, start: int) -> None:
    """The run folder with this run's config; logs cut back to the epochs kept."""
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.yaml")
    truncate_metrics(out, start)
    RoutingLog(out).truncate(start)


def _say_interrupted(err: Interrupted, out: Path, rt: Runtime) -> None:
    done = load_checkpoint(out / "last.pt")["epoch"]
    rank = f"rank {rt.dist.rank}: " if rt.dist.enabled else ""
    print(
        f"{rank}{err}: stopped before step {err.step + 1} of epoch {err.epoch + 1}; "
        f"{out / 'last.pt'} holds {done} finished epochs; "
        f"continue with: condnet train --resume {out}",
        file=sys.stderr,
    )


def start_run(
    cfg: Config,
    rt: Runtime,
    num_classes: int,
    *,
    state: dict[str, Any] | None = None,
    source: Path | str = "the checkpoint",
) -> EpochContext:
    """The network, its optimizer, routing monitor and router rates, placed on `rt`'s device
    and wrapped to run. The weights are drawn from `run.seed`; a resumed run's `state` then
    restores weights, optimizer and generators (the optimizer takes this run's settings,
    which may have changed on resume: `condnet.engine.resume`). `source` names the state's
    file in errors."""
    torch.manual_seed(cfg.run.seed)  # the initial weights
    model = build_network(cfg, num_classes)
    optimizer = make_optimizer(model, cfg, fused=rt.device.type == "cuda")
    if state is not None:
        _restore(state, source, model, optimizer, cfg)
    place_model(model, rt)
    _optimizer_state_like_params(optimizer)
    return EpochContext(
        model=model,
        net=_wrap(model, cfg, rt),
        optimizer=optimizer,
        cfg=cfg,
        rt=rt,
        monitor=_monitor(model, cfg, num_classes),
        routers=RouterRates.wanted(model, cfg.train),
    )


def _restore(state: dict[str, Any], source, model: CondNet, optimizer, cfg: Config) -> None:
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise CondnetError(
            f"{source}: does not fit this run's network ({first_line(err, 160)})"
        ) from None
    apply_optimizer_settings(optimizer, cfg.train)
    set_rng_state(state["rng"])


def _saver(out: Path, ctx: EpochContext, *, class_names, resumes: list):
    """save(epoch, metrics, best_top1, best=...): last.pt (and best.pt), on rank 0 only."""

    def save(epoch: int, metrics: list, best_top1: float, best: bool) -> None:
        if not ctx.rt.dist.main:
            return
        training = {
            "optimizer": ctx.optimizer.state_dict(),
            "epoch": epoch + 1,  # epochs finished, counted from 1 (0: none yet)
            "rng": rng_state(),
            "metrics": metrics,
            "best_top1": best_top1,
            "resumes": resumes,
        }
        state = checkpoint_state(
            ctx.model,
            class_names,
            eval_transform=TransformSpec.from_config(ctx.cfg.data),
            config=ctx.cfg,
            training=training,
        )
        try:
            save_checkpoint(state, out / "last.pt")
            if best:
                save_checkpoint(state, out / "best.pt")
        except OSError as err:
            raise CondnetError(
                f"cannot write a checkpoint in {out} ({err.strerror or err}); "
                "the previous checkpoint is intact"
            ) from None

    return save


def _val_loaders(cfg: Config, val_set, rt: Runtime) -> tuple[Loader, Loader]:
    """(every epoch's, the last epoch's) validation loaders: epochs before the last evaluate
    a fixed class-balanced subset when `train.epoch_eval_subset` is set."""
    whole = eval_loader(cfg, val_set, rt)
    if not cfg.train.epoch_eval_subset:
        return whole, whole
    per_rank = -(-cfg.train.epoch_eval_subset // rt.dist.world)
    return eval_loader(cfg, eval_subset(val_set, per_rank, cfg.run.seed + 2), rt), whole


def _monitor(model: CondNet, cfg: Config, num_classes: int) -> RoutingMonitor | None:
    """Routing diagnostics for a network with CondConv routers, unless turned off."""
    if not cfg.run.routing_stats_every or not has_routing(model):
        return None
    return RoutingMonitor(model, num_classes, cfg.run.routing_stats_every)


def run_epoch(
    ctx: EpochContext, epoch: int, train_set, val_loader: Loader
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train one epoch and evaluate: (the metrics record, the routing diagnostics' records)."""
    cfg, rt = ctx.cfg, ctx.rt
    lr = apply_schedule(ctx.net, ctx.optimizer, epoch, cfg.train)
    generator = seed_epoch(cfg.run.seed, epoch, rt.dist.rank)
    started = time.perf_counter()
    loss, seen, skipped = train_one_epoch(
        ctx, train_loader(cfg, train_set, rt, epoch, generator), epoch
    )
    train_seconds = time.perf_counter() - started
    if not math.isfinite(loss):
        raise CondnetError(
            f"training loss became {loss} in epoch {epoch + 1}; stopped, "
            "the last good checkpoint is kept (try a lower train.lr_peak)"
        )
    if skipped:
        print(f"warning: epoch {epoch + 1}: skipped {skipped} unreadable images", file=sys.stderr)
    val = evaluate(
        ctx.net,
        val_loader,
        rt,
        progress=ctx.progress,
        monitor=ctx.monitor,
        on_bad_image=cfg.data.on_bad_image,
    )
    record = {
        "epoch": epoch + 1,  # counted from 1, as printed
        "lr": lr,
        "train_loss": loss,
        "val_loss": val["loss"],
        "val_top1": val["top1"],
        "val_top5": val["top5"],
        "epoch_seconds": time.perf_counter() - started,
        "images_per_second": seen / max(train_seconds, 1e-9),
        "skipped_images": skipped,
        "train_images": seen,
        "val_images": val["count"],
        **rt.record(),  # precision and device: the report's provenance
    }
    return record, _routing_records(ctx, epoch)


def _routing_records(ctx: EpochContext, epoch: int) -> list[dict[str, Any]]:
    if ctx.monitor is None:
        return []

    def reduce(values):
        return distributed.sum_across(values, ctx.rt.dist)

    return ctx.monitor.epoch_records(epoch + 1, reduce)  # epochs counted from 1


def _wrap(model: nn.Module, cfg: Config, rt: Runtime) -> nn.Module:
    net = model
    if rt.dist.enabled:
        ids = [rt.device.index] if rt.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(net, device_ids=ids)
    if not cfg.run.compile:
        return net
    # Static shapes: the tensor pipeline's batches never change shape, so nothing recompiles.
    return torch.compile(net, dynamic=False, mode=cfg.run.compile_mode)


def _optimizer_state_like_params(optimizer: torch.optim.Optimizer) -> None:
    """Each parameter's optimizer state (momentum) on the parameter's device and in its memory
    layout: a run may resume on another device or with another `run.channels_last`, and the
    fused update needs equal strides."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    state[key] = torch.empty_like(param).copy_(value)
                elif isinstance(value, torch.Tensor):
                    state[key] = value.to(param.device)
