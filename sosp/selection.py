"""The pruning kernel: global selection of the structures to remove, pruning targets, and physical
surgery. It sits below every method (pruners use its selection and cost search) and knows no method
by name: running a method is :mod:`sosp.runner`'s job.

Selection ranks all ``S`` structures of all groups together by saliency, lowest first, and never takes
a group below its floor (:func:`group_floor`). ``ratio`` means a fraction of structures (the paper's
definition) or, with ``target="macs"``/``"params"``, a fraction of the base model's cost, reached by
binary search on the number of removed structures with exact counts of the pruned model
(:func:`fewest_for_cost`). Surgery is torch-pruning's.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.nn as nn

from . import measure
from .errors import ConfigError, UnsupportedModelError, check_positive_int
from .structures import ChannelGroup, dependency_graph
from .utils import eval_mode

TARGETS = ("structures", "macs", "params")
NORMALIZE = ("none", "cost")


@dataclass
class PruneResult:
    """A pruned copy of the model, the removed structures (per group, or per method-specific unit) and
    the report that becomes the record."""

    model: nn.Module
    removed: dict[str, list[int]]
    report: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PruneRequest:
    """What a whole pruner (a method of kind ``pruner``) is asked to do: prune ``model`` to ``ratio`` of
    ``target`` using the calibration ``batches`` (at most ``num_samples`` samples), keeping at least
    :func:`group_floor` of every group. One object, so that a field added here never breaks a pruner."""

    model: nn.Module
    batches: Iterable
    ratio: float
    example_input: torch.Tensor
    target: str = "structures"
    num_samples: int | None = None
    seed: int = 0
    min_channels: int = 1
    min_fraction: float = 0.0


def check_ratio(ratio: float) -> float:
    if not (isinstance(ratio, (int, float)) and 0.0 <= ratio < 1.0):
        raise ConfigError(f"ratio must be in [0, 1), got {ratio!r}")
    return float(ratio)


def check_floor(min_channels: int = 1, min_fraction: float = 0.0) -> tuple[int, float]:
    """``(min_channels, min_fraction)`` validated: an integer >= 1 and a fraction in [0, 1)."""
    check_positive_int("min_channels", min_channels)
    if isinstance(min_fraction, bool) or not isinstance(min_fraction, (int, float)) or not 0.0 <= min_fraction < 1.0:
        raise ConfigError(f"min_fraction must be a fraction in [0, 1), got {min_fraction!r}")
    return min_channels, float(min_fraction)


def group_floor(size: int, min_channels: int = 1, min_fraction: float = 0.0) -> int:
    """Channels a group of ``size`` keeps at least: ``max(min_channels, ceil(min_fraction * size))``,
    capped at ``size`` (a group smaller than its floor is not pruned)."""
    return min(size, max(min_channels, math.ceil(min_fraction * size - 1e-9)))


def lowest_first(scores: Sequence[torch.Tensor], floors: Sequence[int]) -> list[tuple[int, int]]:
    """Every removable ``(set index, item)`` of the score sets, lowest score first, never taking set ``i``
    below ``floors[i]`` items. Ties are broken by position (set order, then item), so the order is
    deterministic. The one selection rule of every method: channel groups here, EigenDamage's layer
    sides in its own pruner."""
    sizes = [len(s) for s in scores]
    if not sizes or sum(sizes) == 0:
        return []
    flat = torch.cat([s.detach().double().cpu().flatten() for s in scores])
    owner = [(i, item) for i, size in enumerate(sizes) for item in range(size)]
    left = list(sizes)
    chosen = []
    for position in torch.sort(flat, stable=True).indices.tolist():  # stable: ties keep position order
        i, item = owner[position]
        if left[i] > floors[i]:
            left[i] -= 1
            chosen.append((i, item))
    return chosen


def removal_order(
    groups: Sequence[ChannelGroup],
    scores: Sequence[torch.Tensor],
    min_channels: int = 1,
    min_fraction: float = 0.0,
    floors: Sequence[int] | None = None,
) -> list[tuple[int, int]]:
    """Every removable ``(group index, channel)`` in the order they are removed (lowest saliency first,
    :func:`lowest_first`); no group goes below its floor (:func:`group_floor`, or ``floors`` per group)."""
    min_channels, min_fraction = check_floor(min_channels, min_fraction)
    if floors is None:
        floors = [group_floor(g.size, min_channels, min_fraction) for g in groups]
    return lowest_first(scores, floors)


def as_removed(groups: Sequence[ChannelGroup], order: Sequence[tuple[int, int]]) -> dict[str, list[int]]:
    removed: dict[str, list[int]] = {}
    for gi, c in order:
        removed.setdefault(groups[gi].name, []).append(c)
    return {name: sorted(idx) for name, idx in removed.items()}


def remove_channels(
    model: nn.Module, groups: Sequence[ChannelGroup], removed: dict[str, Sequence[int]], example_input: torch.Tensor
) -> nn.Module:
    """A physically smaller copy of ``model`` without the ``removed`` channels of each group."""
    pruned = copy.deepcopy(model)
    if not any(removed.values()):
        return pruned
    graph = dependency_graph(pruned, example_input)
    modules = dict(pruned.named_modules())
    for group in groups:
        idxs = group.channel_indices(removed.get(group.name, ()))  # a grouped conv's structure spans channels
        if not idxs:
            continue
        root = modules[group.name]
        pruner = graph.get_pruner_of_module(root)
        graph.get_pruning_group(root, pruner.prune_out_channels, idxs).prune()
    return pruned


def cost_per_structure(
    model: nn.Module, groups: Sequence[ChannelGroup], example_input: torch.Tensor
) -> list[torch.Tensor]:
    """MACs freed by removing one channel of each group (for ``normalize="cost"``).

    A channel's cost is its share of every producer's MACs plus its share of every consumer's MACs
    (per input channel), counted with the same per-layer MAC counts as :mod:`sosp.measure`.
    """
    per_module = _macs_per_module(model, example_input)
    modules = dict(model.named_modules())
    costs = []
    for g in groups:
        total = 0.0
        for name, out in [(n, True) for n in g.producers] + [(n, False) for n in g.consumers]:
            if name not in per_module:
                raise UnsupportedModelError(
                    f"normalize='cost': layer {name!r} of group {g.name!r} has no MAC count (it did not run "
                    "in the forward pass, or the counter does not know its operation), so its structures "
                    "have no cost to divide by"
                )
            total += per_module[name] / _channels(modules[name], out=out)
        if total <= 0:
            raise UnsupportedModelError(f"normalize='cost': removing a channel of group {g.name!r} frees no MACs")
        costs.append(g.per_structure(torch.full((g.num_channels,), total, dtype=torch.float64)))
    return costs


def _macs_per_module(model: nn.Module, example_input: torch.Tensor) -> dict[str, float]:
    """MACs of each named module (FlopCounterMode's per-module FLOPs / 2) at batch size 1."""
    from torch.utils.flop_counter import FlopCounterMode

    with eval_mode(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(example_input[:1])
    per_module = {}
    for key, ops in counter.get_flop_counts().items():
        if "." in key:  # keys are "<RootClass>.<qualified name>"
            per_module[key.split(".", 1)[1]] = sum(ops.values()) / 2
    return per_module


def _channels(module: nn.Module, out: bool) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features if out else module.in_features
    return module.out_channels if out else module.in_channels


def target_cost(model: nn.Module, example_input: torch.Tensor, target: str) -> int:
    """The model's params (``target="params"``) or MACs at batch size 1 (otherwise)."""
    return measure.count_params(model) if target == "params" else measure.count_macs(model, example_input)


def prune(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    scores: Sequence[torch.Tensor],
    ratio: float = 0.5,
    target: str = "structures",
    min_channels: int = 1,
    normalize: str = "none",
    example_input: torch.Tensor | None = None,
    min_fraction: float = 0.0,
) -> PruneResult:
    """Remove the lowest-saliency structures globally until ``ratio`` of the ``target`` is gone, keeping
    at least :func:`group_floor` channels in every group."""
    ratio = check_ratio(ratio)
    min_channels, min_fraction = check_floor(min_channels, min_fraction)
    if target not in TARGETS:
        raise ConfigError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if normalize not in NORMALIZE:
        raise ConfigError(f"normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}")
    if example_input is None:
        example_input = getattr(groups, "example_input", None)
    if example_input is None:
        raise ConfigError("prune needs an example_input (or groups from sosp.structures.channel_groups)")
    example_input = example_input[:1]
    start = time.perf_counter()
    if normalize == "cost":
        costs = cost_per_structure(model, groups, example_input)
        scores = [s.double().cpu() / c for s, c in zip(scores, costs)]
    order = removal_order(groups, scores, min_channels, min_fraction)
    total = sum(g.size for g in groups)
    if target == "structures":
        k = round(ratio * total)
        if k > len(order):
            raise ConfigError(
                f"ratio {ratio} asks to remove {k} of {total} structures, but the per-group floor "
                f"(min_channels={min_channels}, min_fraction={min_fraction}) of {len(groups)} groups allows "
                f"at most {len(order)}"
            )
        removed = as_removed(groups, order[:k])
        pruned = remove_channels(model, groups, removed, example_input)
    else:
        k, (removed, pruned) = fewest_for_cost(
            model,
            example_input,
            ratio,
            target,
            len(order),
            lambda k: _removal(model, groups, order[:k], example_input),
        )
    report = describe(model, pruned, groups, removed, example_input)
    report.update(
        ratio=ratio,
        target=target,
        min_channels=min_channels,
        min_fraction=min_fraction,
        normalize=normalize,
        selection_seconds=time.perf_counter() - start,
    )
    return PruneResult(model=pruned, removed=removed, report=report)


def search_cost_target(evaluate: Callable[[int], float], n: int, goal: float) -> int | None:
    """Smallest ``k`` in ``[0, n]`` with ``evaluate(k) <= goal``, by binary search (``evaluate``, the
    cost after removing the first ``k`` of ``n`` ranked structures, falls as ``k`` grows); ``None``
    when even ``evaluate(n)`` exceeds ``goal``. ``evaluate(n)`` is called first."""
    if evaluate(n) > goal:
        return None
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if evaluate(mid) <= goal:
            hi = mid
        else:
            lo = mid + 1
    return lo


Built = TypeVar("Built")


def fewest_for_cost(
    model: nn.Module,
    example_input: torch.Tensor,
    ratio: float,
    target: str,
    n: int,
    build: Callable[[int], tuple[nn.Module, Built]],
) -> tuple[int, Built]:
    """Fewest ``k`` of ``n`` ranked removals whose model (``build(k)`` returns it and what else the caller
    needs) has at most ``(1 - ratio)`` of ``model``'s ``target`` cost, and what ``build(k)`` returned
    besides the model (:func:`search_cost_target`; every method's cost target goes through here)."""
    base = target_cost(model, example_input, target)
    cache: dict[int, tuple[Built, int]] = {}

    def evaluate(k: int) -> int:
        if k not in cache:
            pruned, built = build(k)
            cache[k] = (built, target_cost(pruned, example_input, target))
        return cache[k][1]

    k = search_cost_target(evaluate, n, (1.0 - ratio) * base)
    if k is None:
        raise ConfigError(
            f"ratio {ratio} of {target} cannot be reached: removing every removable structure leaves "
            f"{evaluate(n) / base:.3f} of the base {target}"
        )
    return k, cache[k][0]


def _removal(model, groups, order, example_input) -> tuple[nn.Module, tuple[dict, nn.Module]]:
    removed = as_removed(groups, order)
    pruned = remove_channels(model, groups, removed, example_input)
    return pruned, (removed, pruned)


def describe(
    base: nn.Module,
    pruned: nn.Module,
    groups: Sequence[ChannelGroup],
    removed: dict[str, Sequence[int]],
    example_input: torch.Tensor,
) -> dict:
    """What was removed, per group and per layer, and the achieved params/MACs."""
    total = sum(g.size for g in groups)
    per_group = [{"group": g.name, "size": g.size, "removed": len(removed.get(g.name, ()))} for g in groups]
    per_layer = [
        {"layer": p, "group": g.name, "channels": g.size, "removed": len(removed.get(g.name, ()))}
        for g in groups
        for p in g.producers
    ]
    return {
        "num_structures": total,
        "num_removed": sum(r["removed"] for r in per_group),
        "min_kept_fraction": min(((r["size"] - r["removed"]) / r["size"] for r in per_group), default=1.0),
        "achieved_fraction": sum(r["removed"] for r in per_group) / max(total, 1),
        **cost_fields(base, pruned, example_input),
        "per_group": per_group,
        "per_layer": per_layer,
    }


def cost_fields(base: nn.Module, pruned: nn.Module, example_input: torch.Tensor) -> dict:
    """Params and MACs before and after pruning, and the fractions removed (every method's report)."""
    params_before, params_after = measure.count_params(base), measure.count_params(pruned)
    macs_before, macs_after = measure.count_macs(base, example_input), measure.count_macs(pruned, example_input)
    return {
        "params_before": params_before,
        "params_after": params_after,
        "macs_before": macs_before,
        "macs_after": macs_after,
        "params_fraction_removed": 1 - params_after / params_before,
        "macs_fraction_removed": 1 - macs_after / macs_before if macs_before else 0.0,
    }
