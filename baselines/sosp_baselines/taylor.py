"""``taylor``: first-order Taylor importance with the gate after BatchNorm (Molchanov, Mallya, Tyree,
Frosio, Kautz, "Importance Estimation for Neural Network Pruning", CVPR 2019; their best criterion).

Per mini-batch ``m`` the importance of structure ``s`` is ``z_{s,m} = (dL_m/dc_s)^2`` with ``L_m`` the
mini-batch's mean cross-entropy and ``c_s`` the gate after the BatchNorm (:mod:`sosp.structures`);
the saliency is the plain mean of ``z_{s,m}`` over the mini-batches. Because the gate sits right
after BN, ``dL/dc_s = gamma_s dL/dgamma_s + beta_s dL/dbeta_s``: exactly the paper's "gate after BN"
form (docs/method.md section 1). As every method here, scores are taken in eval mode with frozen
parameters (the paper accumulates them in train mode, from the gradients of its fine-tuning steps).

Two schedules:

- ``oneshot`` (default, the matched comparison): the saliency above, then the shared global
  selection and surgery of :mod:`sosp.selection`.
- ``iterative`` (the paper's protocol), the whole pruning method ``taylor_iterative``: alternate
  (a) scoring on ``prune_every`` mini-batches, (b) physically removing the ``per_step``
  lowest-scoring structures (global ranking, at least ``min_channels`` kept per group) and
  (c) ``prune_every`` fine-tuning iterations, until ``ratio`` of the base model's structures are
  gone. Defaults (choice; the paper's exact numbers were not verified): ``prune_every = 10``
  mini-batches, ``per_step`` = 2% of the base structures, SGD with momentum 0.9, lr 1e-3, no weight
  decay. The calibration batches are cycled for both scoring and fine-tuning; pass training batches
  (and enough of them) to get the paper's protocol. ``finetune_fn(model, batches)`` replaces the
  built-in SGD steps. It is only available with ``target="structures"``.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from sosp import selection
from sosp.batches import limit_samples, to_device
from sosp.curvature import scoring_mode, unit_gates_applied
from sosp.errors import ConfigError, SospError, check_positive_int
from sosp.registry import Option, method
from sosp.structures import ChannelGroup, channel_groups, split_flat, total_structures
from sosp.utils import progress, train_mode


def minibatch_gate_gradient(
    model: nn.Module, groups: Sequence[ChannelGroup], x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """``dL_m/dc`` at ``c = 1`` for one mini-batch (flat over all structures)."""
    p = next(model.parameters())
    gates = torch.ones(total_structures(groups), dtype=p.dtype, device=p.device, requires_grad=True)
    with scoring_mode(model), unit_gates_applied(model, groups, gates):  # as SOSP-H: same optimisation level
        loss = F.cross_entropy(model(x), y)
        (grad,) = torch.autograd.grad(loss, gates)
    return grad


def taylor_importance(model: nn.Module, groups: Sequence[ChannelGroup], batches: Iterable) -> torch.Tensor:
    """Mean over mini-batches of the squared mini-batch gate gradients (flat, float64)."""
    total, count = None, 0
    for x, y in batches:
        x, y = to_device(model, x, y)
        z = minibatch_gate_gradient(model, groups, x, y).double() ** 2
        total = z if total is None else total + z
        count += 1
    if count == 0:
        raise SospError("no calibration samples: the batches were empty")
    return total / count


SCHEDULE = Option(
    "schedule",
    str,
    "oneshot",
    "oneshot (the only schedule here; Molchanov et al.'s iterative protocol is the method taylor_iterative)",
)


@method("taylor", options=(SCHEDULE,), calibration_terms=("gradient",))
def taylor(model, groups, batches, *, schedule: str) -> list[torch.Tensor]:
    """Molchanov et al. (2019) one-shot: ``mean_m (dL_m/dc_s)^2``."""
    if schedule == "iterative":
        raise ConfigError(
            "the iterative Taylor protocol removes structures between fine-tuning steps, so it "
            "is a whole pruning method: use method 'taylor_iterative'"
        )
    if schedule != "oneshot":
        raise ConfigError(f"schedule must be 'oneshot' (or use method 'taylor_iterative'), got {schedule!r}")
    return split_flat(taylor_importance(model, groups, batches), groups)


# ---------------------------------------------------------------------------------------------
# Iterative protocol


ITERATIVE_OPTIONS = (
    Option("prune_every", int, 10, "mini-batches scored, and SGD steps taken, between two removals"),
    Option("per_step", int, None, "structures removed per step (none: 2% of the base model's structures)"),
    Option("lr", float, 1e-3, "learning rate of the built-in SGD fine-tuning"),
    Option("momentum", float, 0.9, "momentum of the built-in SGD fine-tuning"),
    Option("weight_decay", float, 0.0, "weight decay of the built-in SGD fine-tuning"),
    Option("finetune_fn", Callable, None, "finetune_fn(model, batches) replaces the built-in SGD steps"),
)


def sgd_finetune(lr: float, momentum: float, weight_decay: float) -> Callable:
    """The built-in fine-tuning: one SGD step (train mode, cross-entropy) per given mini-batch.

    A fresh optimiser per call: the model changes shape between calls, so momentum cannot carry over.
    """

    def finetune(model: nn.Module, batches: Sequence) -> None:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        try:
            with train_mode(model):
                for x, y in batches:
                    x, y = to_device(model, x, y)
                    optimizer.zero_grad(set_to_none=True)
                    F.cross_entropy(model(x), y).backward()
                    optimizer.step()
        finally:
            optimizer.zero_grad(set_to_none=True)

    return finetune


@method("taylor_iterative", "pruner", options=ITERATIVE_OPTIONS, calibration_terms=("gradient",))
def taylor_iterative(
    request: selection.PruneRequest,
    *,
    prune_every: int,
    per_step: int | None,
    lr: float,
    momentum: float,
    weight_decay: float,
    finetune_fn: Callable | None,
) -> selection.PruneResult:
    """Molchanov et al.'s iterative protocol: score, remove the lowest, fine-tune, repeat.

    The steps and defaults are in the module docstring. The request's model itself is left
    untouched; the per-group floor is taken of the original group sizes. The request's ``seed`` seeds
    the global RNG (dropout) while fine-tuning, in a forked RNG state so the caller's stream is
    untouched.
    """
    if request.target != "structures":
        raise ConfigError(
            f"taylor_iterative removes a fraction of structures; target {request.target!r} is not supported"
        )
    min_channels, min_fraction = selection.check_floor(request.min_channels, request.min_fraction)
    check_positive_int("prune_every", prune_every)
    if per_step is not None:
        check_positive_int("per_step", per_step)
    ratio = selection.check_ratio(request.ratio)
    with torch.random.fork_rng():
        torch.manual_seed(request.seed)
        data = list(limit_samples(request.batches, request.num_samples))
        if not data:
            raise SospError("no calibration samples: the batches were empty")
        return _iterative_prune(
            request.model,
            data,
            ratio,
            request.example_input[:1],
            prune_every,
            per_step,
            min_channels,
            min_fraction,
            finetune_fn or sgd_finetune(lr, momentum, weight_decay),
        )


def _iterative_prune(
    model, data, ratio, example_input, prune_every, per_step, min_channels, min_fraction, finetune_fn
) -> selection.PruneResult:
    base_groups = channel_groups(model, example_input)
    total = total_structures(base_groups)
    goal = round(ratio * total)
    per_step = per_step or max(1, math.ceil(0.02 * total))
    alive = {g.name: list(range(g.size)) for g in base_groups}  # surviving original channel indices
    floor_of = {g.name: selection.group_floor(g.size, min_channels, min_fraction) for g in base_groups}
    current, stream = copy.deepcopy(model), itertools.cycle(data)
    removed_count, steps, score_seconds = 0, 0, 0.0
    bar = progress(desc="taylor_iterative", total=goal, unit=" structure")
    while removed_count < goal:
        groups = channel_groups(current, example_input)
        chunk = [next(stream) for _ in range(prune_every)]
        start = time.perf_counter()
        scores = split_flat(taylor_importance(current, groups, chunk), groups)
        score_seconds += time.perf_counter() - start
        floors = [floor_of.get(g.name, min_channels) for g in groups]
        order = selection.removal_order(groups, scores, floors=floors)[: min(per_step, goal - removed_count)]
        if not order:
            break  # every group is down to min_channels
        removed_now = selection.as_removed(groups, order)
        current = selection.remove_channels(current, groups, removed_now, example_input)
        for name, idx in removed_now.items():
            drop = set(idx)
            alive[name] = [c for i, c in enumerate(alive[name]) if i not in drop]
        removed_count += len(order)
        steps += 1
        finetune_fn(current, chunk)
        bar.update(len(order))
    bar.close()
    removed = {g.name: sorted(set(range(g.size)) - set(alive[g.name])) for g in base_groups}
    removed = {name: idx for name, idx in removed.items() if idx}
    report = selection.describe(model, current, base_groups, removed, example_input)
    report.update(
        ratio=ratio,
        target="structures",
        min_channels=min_channels,
        min_fraction=min_fraction,
        steps=steps,
        per_step=per_step,
        prune_every=prune_every,
        saliency_seconds=score_seconds,
    )
    return selection.PruneResult(model=current.eval(), removed=removed, report=report)
