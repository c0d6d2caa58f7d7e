"""Running a pruning method by name: the one path from a method's name (``sosp prune``, the workflow,
the benchmarks) to pruned models and their reports.

The method is looked up once (:func:`sosp.registry.get`) and its options resolved once; the
:class:`~sosp.registry.Method` and the resolved options are then passed down. A channel-saliency
method is scored by :func:`score_resolved` and pruned by the kernel (:func:`sosp.selection.prune`);
a whole pruner gets one :class:`~sosp.selection.PruneRequest`. This module sits above the methods:
nothing below it (kernel, registry, methods) imports it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn as nn

from . import calibration, registry
from .batches import limit_samples
from .errors import ConfigError, SospError, check_non_negative_int
from .selection import NORMALIZE, TARGETS, PruneRequest, PruneResult, check_floor, check_ratio, prune
from .structures import ChannelGroup, channel_groups
from .utils import progress


def _method(method: str | registry.Method, kind: str | None = None) -> registry.Method:
    return registry.get(method, kind) if isinstance(method, str) else method


def score(
    method: str | registry.Method,
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    batches: Iterable,
    *,
    num_samples: int | None = None,
    timings: dict | None = None,
    **options,
) -> list[torch.Tensor]:
    """Saliency of every structure, one tensor per group (length ``group.size``), by a channel-saliency
    method given by name or as a :class:`~sosp.registry.Method`.

    ``batches`` yields ``(x, y)``; at most ``num_samples`` samples are used (all if None). Unknown
    options, or values of the wrong type, raise :class:`ConfigError` naming the option (and the valid
    ones); the others take their declared defaults. ``timings``, if given, receives the seconds spent
    (key ``saliency_seconds``)."""
    entry = _method(method, "saliency")
    if entry.kind != "saliency":
        raise registry.UnknownNameError("saliency method", entry.name, registry.names("saliency"))
    return score_resolved(entry, entry.resolve(options), model, groups, batches, num_samples, timings)


def score_resolved(
    entry: registry.Method,
    resolved: dict,
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    batches: Iterable,
    num_samples: int | None = None,
    timings: dict | None = None,
) -> list[torch.Tensor]:
    """:func:`score` with the method and its options already resolved. On a terminal a bar counts the
    batches the method reads (:func:`sosp.utils.progress`)."""
    start = time.perf_counter()
    with progress(limit_samples(batches, num_samples), f"scoring {entry.name}", unit=" batch") as counted:
        scores = entry.fn(model, groups, counted, **resolved)
    if timings is not None:
        timings["saliency_seconds"] = time.perf_counter() - start
    scores = [s.detach().to("cpu", torch.float64) for s in scores]
    for g, s in zip(groups, scores):
        if s.shape != (g.size,):
            raise RuntimeError(f"method {entry.name!r} returned shape {tuple(s.shape)} for group {g.name}")
        if not torch.isfinite(s).all():
            raise SospError(f"method {entry.name!r} produced non-finite saliencies in group {g.name}")
    return scores


def effective_selection(
    method: str | registry.Method,
    options: dict,
    min_channels: int = 1,
    min_fraction: float = 0.0,
    normalize: str = "none",
) -> dict:
    """The selection settings a run of ``method`` with ``options`` (given or already resolved: the
    declared defaults fill the gaps) really uses and records: the floor is the larger of the configured ``min_fraction`` and the method's own
    (EigenDamage and C-OBD keep 5 % per layer, as their authors' code); ``normalize="cost"`` only where
    the method's scores are on a scale that cost can divide (not ``random``, not layer-wise
    ``magnitude``, not whole pruners), else ``none``."""
    if normalize not in NORMALIZE:
        raise ConfigError(f"normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}")
    min_channels, min_fraction = check_floor(min_channels, min_fraction)
    entry = _method(method)
    return {
        "min_channels": min_channels,
        "min_fraction": max(min_fraction, entry.policy.min_fraction),
        "normalize": normalize if entry.policy.normalizable(entry.resolve(options)) else "none",
    }


def _diagnose(entry, model, make_batches, num_samples, log) -> dict | None:
    """:func:`sosp.calibration.diagnose` of the calibration samples, for a method that reads data."""
    if not entry.calibration_terms:
        return None
    found = calibration.diagnose(model, limit_samples(make_batches(), num_samples), entry.calibration_terms)
    terms = ", ".join(f"{t} {found[f'effective_samples_{t}']:.1f}" for t in entry.calibration_terms)
    log(f"calibration: {found['samples']} samples, effective samples by term: {terms}")
    for warning in found["warnings"]:
        log(f"warning: {warning}")
    return found


def run(
    method: str | registry.Method,
    model: nn.Module,
    batches: Iterable,
    ratio: float,
    *,
    example_input: torch.Tensor,
    **settings,
) -> PruneResult:
    """Score with ``method`` on ``batches`` and prune to ``ratio``: :func:`run_ratios` at one ratio,
    with the same keyword settings and options. ``batches`` is read twice (the calibration
    diagnostics, then the scoring), so a one-shot iterator is first turned into a list."""
    batches = batches if isinstance(batches, (list, tuple)) else list(batches)
    (result,) = run_ratios(method, model, lambda: batches, [ratio], example_input=example_input, **settings)
    return result


def run_ratios(
    method: str | registry.Method,
    model: nn.Module,
    make_batches: Callable[[], Iterable],
    ratios: Sequence[float],
    *,
    example_input: torch.Tensor,
    target: str = "structures",
    **settings,
) -> list[PruneResult]:
    """:func:`run` at several ratios of one ``target``: :func:`run_points` at ``(target, ratio)`` for each
    ratio, as a list (same keyword settings and options)."""
    points = [(target, ratio) for ratio in ratios]
    return list(run_points(method, model, make_batches, points, example_input=example_input, **settings))


def run_points(
    method: str | registry.Method,
    model: nn.Module,
    make_batches: Callable[[], Iterable],
    points: Sequence[tuple[str, float]],
    *,
    example_input: torch.Tensor,
    min_channels: int = 1,
    min_fraction: float = 0.0,
    normalize: str = "none",
    num_samples: int | None = None,
    seed: int = 0,
    warmup_batches: int = 0,
    log: Callable[[str], None] | None = None,
    **options,
) -> Iterator[PruneResult]:
    """:func:`run` at several ``(target, ratio)`` points, one result per point, in order, yielded as each
    is made (a caller that writes and drops each keeps one pruned copy in memory at a time). A
    channel-saliency method scores once (saliencies depend on neither the ratio nor the target) and
    selects per point; ``prune_seconds`` of each result is the shared scoring time plus its own
    selection and surgery. Whole pruners (kind ``pruner``) run once per point, each on fresh batches
    from ``make_batches()``. The selection settings are those of :func:`effective_selection`, and each
    report records them, the options given (``options``; a method's ``seed`` option defaults to the
    run's ``seed``), every option the method ran with (``resolved_options``: the given ones and the
    declared defaults), the package that provided the method (``method_package``) and, for a method
    that reads data, the calibration diagnostics (``calibration``: :func:`sosp.calibration.diagnose` on
    the same samples, untimed; its warnings go to ``log`` too). Every point is checked before anything
    runs.

    ``warmup_batches``: untimed scoring passes on that many batches before the timed one (channel
    methods), so one-off costs (lazy imports, first-call allocations) do not count against a method.
    ``log``: where progress lines go (e.g. the CLI's logger)."""
    check_non_negative_int("warmup_batches", warmup_batches)
    log = log or (lambda message: None)
    points = [(target, check_ratio(ratio)) for target, ratio in points]
    for target, _ in points:
        if target not in TARGETS:
            raise ConfigError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    entry = _method(method)
    if entry.kind == "saliency" and "seed" in {o.name for o in entry.options} and "seed" not in options:
        options["seed"] = seed
    resolved = entry.resolve(options)
    selection = effective_selection(entry, resolved, min_channels, min_fraction, normalize)
    settings = dict(example_input=example_input, num_samples=num_samples, seed=seed, warmup=warmup_batches, log=log)
    return _run_points(entry, resolved, selection, options, model, make_batches, points, **settings)


def _run_points(
    entry, resolved, selection, options, model, make_batches, points, *, example_input, num_samples, seed, warmup, log
) -> Iterator[PruneResult]:
    """The body of :func:`run_points` (a generator: it runs as its results are asked for)."""
    recorded = {
        "method": entry.name,
        "method_package": entry.provider,
        "options": dict(options),
        "resolved_options": dict(resolved),
        "seed": seed,
        "calibration": _diagnose(entry, model, make_batches, num_samples, log),
    }
    if entry.kind == "pruner":
        for target, ratio in points:
            request = PruneRequest(
                model,
                make_batches(),
                ratio,
                example_input,
                target=target,
                num_samples=num_samples,
                seed=seed,
                min_channels=selection["min_channels"],
                min_fraction=selection["min_fraction"],
            )
            start = time.perf_counter()
            result = entry.fn(request, **resolved)
            result.report.update(recorded, prune_seconds=time.perf_counter() - start)
            for key, value in selection.items():  # what was applied: the pruner's own report wins
                result.report.setdefault(key, value)
            yield result
        return
    t_groups = time.perf_counter()
    groups = channel_groups(model, example_input)
    grouping = time.perf_counter() - t_groups
    if warmup:
        warm = list(itertools.islice(make_batches(), warmup))
        t0 = time.perf_counter()
        score_resolved(entry, resolved, model, groups, warm)
        log(f"warm-up scoring on {len(warm)} batch(es) ({time.perf_counter() - t0:.2f} s, not counted)")
    start = time.perf_counter()
    timings: dict = {}
    scores = score_resolved(entry, resolved, model, groups, make_batches(), num_samples, timings)
    scoring = grouping + time.perf_counter() - start
    log(f"scored {sum(g.size for g in groups)} structures in {len(groups)} groups ({scoring:.2f} s)")
    for target, ratio in points:
        t0 = time.perf_counter()
        result = prune(model, groups, scores, ratio=ratio, target=target, example_input=example_input, **selection)
        result.report.update(timings)
        result.report["scores"] = {g.name: s.tolist() for g, s in zip(groups, scores)}
        result.report.update(
            recorded,
            prune_seconds=scoring + time.perf_counter() - t0,
            warmup_batches=warmup,
            shared_scoring=len(points) > 1,
        )
        yield result
