"""Training, fine-tuning and evaluation (docs/method.md section 8).

One SGD loop serves base training and fine-tuning after pruning. It is deterministic on the CPU: the
data order, augmentation and any dropout of epoch ``e`` come from generators seeded with
``(seed, e)``, so a run resumed from its end-of-epoch checkpoint replays exactly the batches an
uninterrupted run would see, and ends with bit-identical weights.

Under torchrun with more than one process (an initialised process group, :mod:`sosp.distributed`)
the same loop is data-parallel (DistributedDataParallel): ``batch_size`` stays the global batch, each
rank trains on its shard of it, rank 0 alone writes checkpoints and calls ``log``, and evaluation is
sharded and summed over the ranks. On a CUDA device training uses bfloat16 autocast and channels-last
tensors (``TrainConfig.amp``, ``TrainConfig.channels_last``; :func:`runtime_options`); the CPU path
is always float32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import distributed as dist_
from .data import DataBundle, Split, batches
from .errors import ConfigError, TrainingDivergedError
from .io import write_atomic
from .utils import eval_mode
from .utils import progress as progress_bar

__all__ = ["TrainConfig", "DEFAULT_DIGITS_CONFIG", "train", "evaluate", "seed_everything", "runtime_options"]

_CHECK_EVERY = 50  # steps between loss finiteness checks (each check synchronises a GPU)


@dataclass(frozen=True)
class TrainConfig:
    """SGD recipe; every value comes from the tier's config. Milestones are fractions of ``epochs``;
    the learning rate follows the schedule per step, after ``warmup_epochs`` of linear warm-up.

    ``batch_size`` is the global batch: with data-parallel training it is split evenly over the
    processes (and must be divisible by their number). ``amp``: mixed precision on a CUDA device,
    ``"bf16"`` (bfloat16 autocast), ``"off"`` (float32) or ``"auto"`` (bf16 where the GPU supports it);
    ``channels_last``: channels-last memory format, ``True``, ``False`` or ``"auto"`` (on a CUDA
    device). The CPU always trains in float32, whatever ``amp`` says; what was used is
    :func:`runtime_options`.
    """

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "cosine"
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    amp: str = "auto"
    channels_last: str | bool = "auto"

    def __post_init__(self):
        amp = {False: "off", True: "bf16"}.get(self.amp, self.amp) if isinstance(self.amp, bool) else self.amp
        amp = amp.lower() if isinstance(amp, str) else amp
        if amp not in _AMP:
            raise ConfigError(f"training config amp must be one of {', '.join(_AMP)}, got {self.amp!r}")
        object.__setattr__(self, "amp", amp)
        cl = self.channels_last
        cl = _CHANNELS_LAST_WORDS.get(cl.lower(), cl) if isinstance(cl, str) else cl
        if cl not in ("auto", True, False) or (not isinstance(cl, (bool, str))):
            raise ConfigError(
                f"training config channels_last must be true, false or 'auto', got {self.channels_last!r}"
            )
        object.__setattr__(self, "channels_last", cl)
        for name in ("lr", "momentum", "weight_decay", "gamma", "label_smoothing"):  # YAML reads 1e-3 as text
            value = getattr(self, name)
            try:
                if isinstance(value, bool):
                    raise ValueError
                object.__setattr__(self, name, float(value))
            except (TypeError, ValueError):
                raise ConfigError(f"training config {name} must be a number, got {value!r}") from None
        for name in ("epochs", "batch_size", "warmup_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"training config {name} must be an integer, got {value!r}")
        if not isinstance(self.nesterov, bool):
            raise ConfigError(f"training config nesterov must be true or false, got {self.nesterov!r}")
        try:
            object.__setattr__(self, "milestones", tuple(float(m) for m in self.milestones))
        except (TypeError, ValueError):
            raise ConfigError(
                f"training config milestones must be a list of fractions, got {self.milestones!r}"
            ) from None
        checks = [
            (self.epochs >= 0, "epochs must be >= 0"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0 and math.isfinite(self.lr), "lr must be a positive number"),
            (0 <= self.momentum < 1, "momentum must be in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.schedule in ("cosine", "step"), "schedule must be 'cosine' or 'step'"),
            (all(0 < m <= 1 for m in self.milestones), "milestones must be fractions of epochs in (0, 1]"),
            (0 < self.gamma <= 1, "gamma must be in (0, 1]"),
            (0 <= self.warmup_epochs <= self.epochs, "warmup_epochs must be in [0, epochs]"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (not (self.nesterov and self.momentum == 0), "nesterov needs momentum > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"{message} (training config: {self})")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a config mapping; an unknown or missing key is a ConfigError naming it."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(
                f"unknown training config key(s): {', '.join(map(repr, unknown))}; known: {', '.join(sorted(names))}"
            )
        missing = [k for k in ("epochs", "batch_size", "lr") if k not in d]
        if missing:
            raise ConfigError(f"training config is missing key(s): {', '.join(map(repr, missing))}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d


_AMP = ("auto", "bf16", "off")
_CHANNELS_LAST_WORDS = {"auto": "auto", "on": True, "true": True, "off": False, "false": False}
#: defaults of keys added after checkpoints were first written: an older checkpoint resumes
_ADDED_DEFAULTS = {"amp": "auto", "channels_last": "auto"}


def runtime_options(config: TrainConfig, device="cpu") -> dict[str, Any]:
    """What :func:`train` uses with ``config`` on ``device``, for the record: ``amp`` (``"bf16"`` or
    ``"off"``; always off on the CPU), ``channels_last`` (bool), ``world_size`` (processes of the
    data-parallel group, 1 without one), ``per_rank_batch_size`` and ``device``."""
    device = dist_.local_device(device)
    cuda = device.type == "cuda"
    if not cuda or config.amp == "off":
        amp = "off"
    elif config.amp == "bf16":
        amp = "bf16"
    else:
        amp = "bf16" if torch.cuda.is_bf16_supported() else "off"
    channels_last = cuda if config.channels_last == "auto" else bool(config.channels_last)
    world = dist_.world_size()
    return {
        "amp": amp,
        "channels_last": channels_last,
        "world_size": world,
        "per_rank_batch_size": config.batch_size // world,
        "device": str(device),
    }


DEFAULT_DIGITS_CONFIG = TrainConfig(
    epochs=20, batch_size=64, lr=0.1, weight_decay=5e-4, schedule="cosine", label_smoothing=0.1
)
"""ResNet-20 on digits: about 98 % test top-1, about 0.6 s per epoch on one CPU thread. Label smoothing
0.1 keeps the base model from fitting its training images perfectly, so that loss-based pruning scores
rest on more than a handful of calibration images (benchmarks/calibration.py: 2-14 effective samples
of 256 without it, 175-232 with it; docs/method_choices.md, "Calibration")."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices): initialisation and anything else drawing globally."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int, stream: int, rank: int = 0) -> int:
    """Independent 63-bit seeds per (run seed, epoch, stream, rank): resumable without saving RNG
    state; rank 0 gets a single process's seed."""
    entropy = [seed % 2**63, epoch, stream] + ([rank] if rank else [])
    return int(np.random.SeedSequence(entropy).generate_state(2, np.uint64)[0] >> 1)


def _lr_factor(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    total = max(1, config.epochs * steps_per_epoch)
    warmup = config.warmup_epochs * steps_per_epoch
    milestones = [round(m * config.epochs) * steps_per_epoch for m in config.milestones]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "cosine":
            t = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        return config.gamma ** sum(step >= m for m in milestones)

    return factor


def _steps_per_epoch(n: int, batch_size: int) -> tuple[int, bool]:
    """Drop the last partial batch (tiny batches make BatchNorm statistics noisy) unless it is all."""
    drop_last = n >= batch_size
    return (n // batch_size if drop_last else 1), drop_last


def train(
    model: nn.Module,
    data: DataBundle,
    config: TrainConfig,
    *,
    seed: int,
    checkpoint_dir: str | Path | None = None,
    device="cpu",
    progress: bool = True,
    log: Callable[[dict], None] | None = None,
) -> dict[str, list]:
    """Train ``model`` in place for ``config.epochs`` epochs on ``data.train``; return the history.

    History: per epoch ``epoch`` (1-based), ``train_loss``, ``val_top1`` (None without a validation
    split), ``lr`` (at the epoch's first step) and ``seconds``. With ``checkpoint_dir``,
    ``last.pt`` is written atomically after every epoch and a run finding one resumes from it (it must
    have been written with the same config and seed). ``log`` receives each epoch's record;
    ``progress`` shows a bar of each epoch's steps on a terminal (:func:`sosp.utils.progress`). The
    final-epoch model is kept; the test split is never touched here.

    In an initialised process group of more than one process (torchrun, :mod:`sosp.distributed`),
    every rank calls this with the same arguments and the model is trained data-parallel: each rank
    trains on its shard of every global batch of ``config.batch_size`` examples; only rank 0 writes
    the checkpoint (the others wait for it) and calls ``log`` and shows progress; the returned
    history and model are the same on every rank. A ``"cuda"`` device means this rank's GPU.
    """
    parallel = dist_.is_distributed()
    world, rank = dist_.world_size(), dist_.rank()
    device = dist_.local_device(device)
    cuda = device.type == "cuda"
    options = runtime_options(config, device)
    amp, channels_last = options["amp"] == "bf16", options["channels_last"]
    seed_everything(seed)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov,
    )
    train_split, val_split = data.train.to(device), data.val.to(device)
    if parallel:
        if config.batch_size % world:
            raise ConfigError(
                f"batch_size {config.batch_size} (the global batch) must be divisible by the number of "
                f"processes ({world})"
            )
        if len(train_split) < world:
            raise ConfigError(f"{len(train_split)} training examples cannot be shared by {world} processes")
    steps, drop_last = _steps_per_epoch(len(train_split), config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config, steps))
    history: dict[str, list] = {"epoch": [], "train_loss": [], "val_top1": [], "lr": [], "seconds": []}
    start_epoch = 0

    ckpt_path = Path(checkpoint_dir) / "last.pt" if checkpoint_dir is not None else None
    if ckpt_path is not None and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        saved = state.get("config")
        saved = {**_ADDED_DEFAULTS, **saved} if isinstance(saved, dict) else saved
        if saved != config.to_dict() or state.get("seed") != seed:
            raise ConfigError(
                f"{ckpt_path} was written by a run with another training config or seed "
                f"({state.get('config')}, seed {state.get('seed')}); delete it to start over "
                f"or use another checkpoint folder"
            )
        saved_shapes = {k: tuple(v.shape) for k, v in state["model"].items()}
        model_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if saved_shapes != model_shapes:
            raise ConfigError(
                f"{ckpt_path} holds a model of another shape (a different architecture or "
                "pruned model); delete it to start over or use another checkpoint folder"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history = state["epoch"], state["history"]
    if parallel and not dist_.all_equal(start_epoch):
        raise ConfigError(
            f"the processes found different checkpoints in {checkpoint_dir} (this one: epoch {start_epoch}); "
            "the checkpoint folder must be shared by every process"
        )

    net = model
    if parallel:  # broadcasts rank 0's parameters and buffers now; averages gradients in backward
        # Buffers (BatchNorm running statistics) do not enter a training forward pass: each rank keeps
        # its own during the epoch and rank 0's are copied to all before evaluating and saving (as
        # broadcasting them before every forward would, one collective per step fewer).
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if cuda else None, **_NO_FORWARD_BUFFER_SYNC
        )
    shard = (rank, world) if parallel else None
    try:
        for epoch in range(start_epoch, config.epochs):
            t0 = time.perf_counter()
            torch.manual_seed(_epoch_seed(seed, epoch, 1, rank))  # dropout and any other global draws
            generator = torch.Generator().manual_seed(_epoch_seed(seed, epoch, 0))  # order + augmentation
            workers = torch.Generator().manual_seed(_epoch_seed(seed, epoch, 2, rank)) if parallel else None
            lr0 = optimizer.param_groups[0]["lr"]
            batch_iter = _batches(train_split, data, config.batch_size, generator, workers, device, drop_last, shard)
            loss_sum = _train_epoch(
                net,
                batch_iter,
                config,
                optimizer,
                scheduler,
                device,
                steps,
                epoch,
                progress and rank == 0,
                amp,
                channels_last,
                parallel,
            )
            if parallel:
                dist_.broadcast_buffers(model)  # rank 0's BatchNorm statistics are the model's
            val = (
                evaluate(model, val_split, batch_size=max(512, config.batch_size), device=device)["top1"]
                if len(val_split)
                else None
            )
            record = {
                "epoch": epoch + 1,
                "train_loss": loss_sum / steps,
                "val_top1": val,
                "lr": lr0,
                "seconds": time.perf_counter() - t0,
            }
            for k, v in record.items():
                history[k].append(v)
            if ckpt_path is not None:
                if rank == 0:
                    state = {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "epoch": epoch + 1,
                        "history": history,
                        "config": config.to_dict(),
                        "seed": seed,
                    }
                    write_atomic(ckpt_path, lambda tmp, state=state: torch.save(state, tmp))
                dist_.barrier()  # no rank runs ahead of a checkpoint that is not written yet
            if log is not None and rank == 0:
                log(dict(record))
    finally:
        del net
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    return history


#: DistributedDataParallel's option to sync buffers at construction only (renamed in torch 2.14)
_NO_FORWARD_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    else {"broadcast_buffers": False}
)


def _batches(split: Split, data: DataBundle, batch_size: int, generator, workers, device, drop_last, shard):
    """``(x, y, weight)`` training batches: a single process's, or under data parallelism (``shard`` =
    ``(rank, world)``) this rank's contiguous shard of each global batch, with ``weight`` = shard
    size x world / global batch size (1 for equal shards), which makes DDP's average of the ranks'
    gradients the gradient of the global batch mean."""
    if shard is None or split.in_memory:
        # in memory, every rank draws the whole global batch (order and augmentation from the same
        # generator: exactly a single process's batch) and keeps its slice, cheap next to the model
        for x, y in batches(
            split,
            batch_size,
            shuffle=True,
            generator=generator,
            augment=data.augment,
            device=device,
            drop_last=drop_last,
        ):
            if shard is None:
                yield x, y, 1.0
            else:
                lo, hi = dist_.shard_bounds(len(y), *shard)
                yield x[lo:hi], y[lo:hi], (hi - lo) * shard[1] / len(y)
        return
    rank, world = shard
    n = len(split)
    sampler = dist_.ShardedBatchSampler(n, batch_size, rank, world, generator=generator, drop_last=drop_last)
    ds = split.train_dataset if data.augment and split.train_dataset is not None else split.dataset
    loader = torch.utils.data.DataLoader(
        ds,
        batch_sampler=sampler,
        num_workers=min(8, max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world)))),
        pin_memory=device.type == "cuda",
        generator=workers,  # per-rank seeds of the workers' augmentation
    )
    for i, (x, y) in enumerate(loader):
        size = min(batch_size, n - i * batch_size)
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True), len(y) * world / size


def _train_epoch(
    net,
    batch_iter,
    config: TrainConfig,
    optimizer,
    scheduler,
    device,
    steps: int,
    epoch: int,
    show: bool,
    amp: bool,
    channels_last: bool,
    parallel: bool,
) -> float:
    """One epoch of SGD; returns the summed batch losses (global batch means, the same on every rank).
    Checks finiteness every few steps (every rank at the same step, so all raise together)."""
    cuda = device.type == "cuda"
    net.train()
    pending: list[torch.Tensor] = []
    first_pending, loss_sum = 0, 0.0
    bar = progress_bar(desc=f"epoch {epoch + 1}/{config.epochs}", total=steps, enabled=show, unit=" step")
    world = dist_.world_size() if parallel else 1

    def check(step: int) -> None:  # ``step`` = number of steps done
        nonlocal pending, first_pending, loss_sum
        if not pending:
            return
        values = torch.stack(pending).float()
        if parallel:
            dist_.all_reduce_sum(values)  # shares of the global batch mean -> the mean
        values = values.cpu()
        bad = (~torch.isfinite(values)).nonzero()
        if len(bad):
            i = int(bad[0])
            kind = "nan" if math.isnan(values[i]) else "inf"
            raise TrainingDivergedError(
                f"loss became {kind} at epoch {epoch + 1}, step {first_pending + i + 1} (1-based, of {steps} "
                f"steps per epoch); lower the learning rate (lr={config.lr}) or add warm-up epochs"
            )
        loss_sum += float(values.double().sum())
        bar.set_postfix(loss=f"{float(values[-1]):.4f}", refresh=False)
        pending, first_pending = [], step

    autocast = (lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16)) if amp else contextlib.nullcontext
    try:
        for step, (x, y, weight) in enumerate(batch_iter):
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast():
                out = net(x)
            loss = F.cross_entropy(out.float(), y, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            (loss if weight == 1.0 else loss * weight).backward()
            optimizer.step()
            scheduler.step()
            pending.append(loss.detach() * (weight / world) if parallel else loss.detach())
            if len(pending) >= _CHECK_EVERY or not (cuda or parallel):  # each check of many ranks syncs
                check(step + 1)
            bar.update()
        check(steps)
    finally:
        bar.close()
    return loss_sum


@torch.inference_mode()
def evaluate(
    model: nn.Module, split: Split, *, batch_size: int = 512, device="cpu", sharded: bool | None = None
) -> dict[str, float]:
    """Top-1, top-k (k = min(5, classes)) accuracy as fractions in [0, 1] and mean cross-entropy, in
    eval mode; the model's train/eval mode is restored afterwards. An empty split gives NaNs.

    ``sharded`` (default: whether a process group of more than one process is initialised): each
    rank evaluates a contiguous shard of ``split`` and the counts and loss sums are summed over the
    ranks, so every rank returns the whole split's metrics; every rank must call it. Always float32.
    """
    parallel = dist_.is_distributed() if sharded is None else sharded
    device = dist_.local_device(device)
    model.to(device)
    if parallel:
        lo, hi = dist_.shard_bounds(len(split), dist_.rank(), dist_.world_size())
        split = split.subset(torch.arange(lo, hi))
    correct1 = correct5 = total = 0
    loss_sum = 0.0
    with eval_mode(model):
        for x, y in batches(split, batch_size, device=device):
            out = model(x).float()
            k = min(5, out.shape[1])
            top = out.topk(k, dim=1).indices
            hit = top == y[:, None]
            correct1 += int(hit[:, 0].sum())
            correct5 += int(hit.any(1).sum())
            loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
            total += len(y)
    if parallel:
        sums = torch.tensor([correct1, correct5, loss_sum, total], dtype=torch.float64, device=device)
        dist_.all_reduce_sum(sums)
        correct1, correct5, loss_sum, total = int(sums[0]), int(sums[1]), float(sums[2]), int(sums[3])
    if total == 0:
        return {"top1": math.nan, "top5": math.nan, "loss": math.nan}
    return {"top1": correct1 / total, "top5": correct5 / total, "loss": loss_sum / total}
