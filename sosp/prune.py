"""Global selection of the structures to remove, pruning targets, and physical surgery.

Selection ranks all ``S`` structures of all groups together by saliency, lowest first, and never takes
a group below ``min_channels``. ``ratio`` means a fraction of structures (the paper's definition) or,
with ``target="macs"``/``"params"``, a fraction of the base model's cost, reached by binary search on
the number of removed structures with exact counts of the pruned model. Surgery is torch-pruning's.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from . import measure, saliency
from .errors import ConfigError, UnsupportedModelError, check_non_negative_int, check_positive_int
from .structures import ChannelGroup, channel_groups, dependency_graph
from .utils import eval_mode

TARGETS = ("structures", "macs", "params")
NORMALIZE = ("none", "cost")


@dataclass
class PruneResult:
    model: nn.Module
    removed: dict[str, list[int]]
    report: dict = field(default_factory=dict)


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


def removal_order(
    groups: Sequence[ChannelGroup],
    scores: Sequence[torch.Tensor],
    min_channels: int = 1,
    min_fraction: float = 0.0,
    floors: Sequence[int] | None = None,
) -> list[tuple[int, int]]:
    """Every removable ``(group index, channel)`` in the order they are removed (lowest saliency first).

    No group goes below its floor (:func:`group_floor`, or ``floors`` given per group). Ties are
    broken by position (group order, then channel), so the order is deterministic.
    """
    min_channels, min_fraction = check_floor(min_channels, min_fraction)
    if floors is None:
        floors = [group_floor(g.size, min_channels, min_fraction) for g in groups]
    flat = torch.cat([s.detach().double().cpu().flatten() for s in scores])
    owner = [(gi, c) for gi, g in enumerate(groups) for c in range(g.size)]
    order = sorted(range(len(owner)), key=lambda i: (flat[i].item(), i))
    left = [g.size for g in groups]
    chosen = []
    for i in order:
        gi, c = owner[i]
        if left[gi] > floors[gi]:
            left[gi] -= 1
            chosen.append((gi, c))
    return chosen


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
        idxs = sorted(removed.get(group.name, ()))
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
        costs.append(torch.full((g.size,), total, dtype=torch.float64))
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
        k, removed, pruned = _search_cost_target(model, groups, order, ratio, target, example_input)
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


def _search_cost_target(model, groups, order, ratio, target, example_input):
    """Smallest ``k`` whose pruned model has at most ``(1 - ratio)`` of the base cost."""
    base = target_cost(model, example_input, target)
    cache: dict[int, tuple[dict, nn.Module, int]] = {}

    def evaluate(k: int) -> int:
        if k not in cache:
            removed = as_removed(groups, order[:k])
            pruned = remove_channels(model, groups, removed, example_input)
            cache[k] = (removed, pruned, target_cost(pruned, example_input, target))
        return cache[k][2]

    k = search_cost_target(evaluate, len(order), (1.0 - ratio) * base)
    if k is None:
        raise ConfigError(
            f"ratio {ratio} of {target} cannot be reached: removing every removable structure leaves "
            f"{evaluate(len(order)) / base:.3f} of the base {target}"
        )
    removed, pruned, _ = cache[k]
    return k, removed, pruned


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


# ---------------------------------------------------------------------------------------------
# Running a method of sosp.methods by name (imported where used: its pruners import this module)


def __getattr__(name: str):
    if name == "METHODS":  # every method by name: sosp.methods.METHODS
        from . import methods

        return methods.METHODS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def effective_selection(
    method: str, options: dict, min_channels: int = 1, min_fraction: float = 0.0, normalize: str = "none"
) -> dict:
    """The selection settings a run of ``method`` really uses (and records): the floor is the larger
    of the configured ``min_fraction`` and the method's own (EigenDamage and C-OBD keep 5 % per layer,
    as their authors' code); ``normalize="cost"`` only where the method's scores are on a scale that
    cost can divide (not ``random``, not layer-wise ``magnitude``, not whole pruners), else ``none``."""
    from . import methods

    if normalize not in NORMALIZE:
        raise ConfigError(f"normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}")
    min_channels, min_fraction = check_floor(min_channels, min_fraction)
    entry = methods.get(method)
    policy = entry.policy
    return {
        "min_channels": min_channels,
        "min_fraction": max(min_fraction, policy.min_fraction),
        "normalize": normalize if policy.normalizable(entry.resolve(options)) else "none",
    }


def run(
    method: str,
    model: nn.Module,
    batches: Iterable,
    ratio: float,
    *,
    example_input: torch.Tensor,
    target: str = "structures",
    min_channels: int = 1,
    min_fraction: float = 0.0,
    normalize: str = "none",
    num_samples: int | None = None,
    seed: int = 0,
    **options,
) -> PruneResult:
    """Score with ``method`` on ``batches`` and prune to ``ratio``: the one call every rule makes."""
    (result,) = run_ratios(
        method,
        model,
        lambda: batches,
        [ratio],
        example_input=example_input,
        target=target,
        min_channels=min_channels,
        min_fraction=min_fraction,
        normalize=normalize,
        num_samples=num_samples,
        seed=seed,
        **options,
    )
    return result


def run_ratios(
    method: str,
    model: nn.Module,
    make_batches: Callable[[], Iterable],
    ratios: Sequence[float],
    *,
    example_input: torch.Tensor,
    target: str = "structures",
    min_channels: int = 1,
    min_fraction: float = 0.0,
    normalize: str = "none",
    num_samples: int | None = None,
    seed: int = 0,
    warmup_batches: int = 0,
    log: Callable[[str], None] | None = None,
    **options,
) -> list[PruneResult]:
    """:func:`run` at several ratios. A channel-saliency method scores once (saliencies do not depend
    on the ratio) and selects per ratio; ``prune_seconds`` of each result is the shared scoring time
    plus its own selection and surgery. Whole pruners (kind ``pruner``) run once per ratio, each on
    fresh batches from ``make_batches()``. The selection settings are those of
    :func:`effective_selection`, and each report records them, the options given (``options``; a
    saliency method's ``seed`` option defaults to the run's ``seed``) and every option the method ran
    with (``resolved_options``: the given ones and the declared defaults).

    ``warmup_batches``: untimed scoring passes on that many batches before the timed one (channel
    methods), so one-off costs (lazy imports, first-call allocations) do not count against a method.
    ``log``: where progress lines go (e.g. the CLI's logger)."""
    from . import methods

    check_non_negative_int("warmup_batches", warmup_batches)
    log = log or (lambda message: None)
    for ratio in ratios:
        check_ratio(ratio)
    entry = methods.get(method)
    if entry.kind == "saliency" and "seed" in {o.name for o in entry.options} and "seed" not in options:
        options["seed"] = seed
    resolved = entry.resolve(options)
    selection = effective_selection(method, options, min_channels, min_fraction, normalize)
    recorded = {"method": method, "options": dict(options), "resolved_options": dict(resolved), "seed": seed}
    if entry.kind == "pruner":
        results = []
        for ratio in ratios:
            start = time.perf_counter()
            result = entry.fn(
                model,
                make_batches(),
                ratio,
                example_input=example_input,
                target=target,
                num_samples=num_samples,
                seed=seed,
                min_channels=selection["min_channels"],
                min_fraction=selection["min_fraction"],
                **resolved,
            )
            result.report.update(recorded, prune_seconds=time.perf_counter() - start)
            for key, value in selection.items():  # what was applied: the pruner's own report wins
                result.report.setdefault(key, value)
            results.append(result)
        return results
    t_groups = time.perf_counter()
    groups = channel_groups(model, example_input)
    grouping = time.perf_counter() - t_groups
    if warmup_batches:
        warm = list(itertools.islice(make_batches(), warmup_batches))
        t0 = time.perf_counter()
        saliency.score(method, model, groups, warm, num_samples=sum(len(y) for _, y in warm), **options)
        log(f"warm-up scoring on {len(warm)} batch(es) ({time.perf_counter() - t0:.2f} s, not counted)")
    start = time.perf_counter()
    timings: dict = {}
    scores = saliency.score(method, model, groups, make_batches(), num_samples=num_samples, timings=timings, **options)
    scoring = grouping + time.perf_counter() - start
    log(f"scored {sum(g.size for g in groups)} structures in {len(groups)} groups ({scoring:.2f} s)")
    results = []
    for ratio in ratios:
        t0 = time.perf_counter()
        result = prune(model, groups, scores, ratio=ratio, target=target, example_input=example_input, **selection)
        result.report.update(timings)
        result.report["scores"] = {g.name: s.tolist() for g, s in zip(groups, scores)}
        result.report.update(
            recorded,
            prune_seconds=scoring + time.perf_counter() - t0,
            warmup_batches=warmup_batches,
            shared_scoring=len(ratios) > 1,
        )
        results.append(result)
    return results
