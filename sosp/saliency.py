"""Channel saliencies: SOSP-H, SOSP-I and the registry every channel method is selected from.

A saliency method maps ``(model, groups, batches, **options)`` to one 1-D tensor per group, higher
meaning more important. Register a new method with :func:`register` (one decorator in one file) and
it becomes selectable by name in :func:`score`, the command line and the workflow config.
"""
from __future__ import annotations

import inspect
import itertools
import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn as nn

from . import curvature
from .errors import ConfigError, SospError, UnknownNameError
from .structures import ChannelGroup, split_flat, total_structures
from .utils import progress

METHODS: dict[str, Callable] = {}
_BASELINE_MODULES = ("baselines.random", "baselines.magnitude", "baselines.taylor", "baselines.eigendamage")


@dataclass(frozen=True)
class SelectionPolicy:
    """How the shared selection may treat a method's scores (docs/method.md section 5).

    ``cost_normalizable``: whether ``normalize="cost"`` may divide the scores by the MACs a structure
    frees. Only scores on a common, global scale (a predicted loss change, a norm ranked globally)
    can be traded against cost; random draws and within-group ranks cannot, so for them the option
    is not applied (and recorded as ``none``). A bool, or a function of the method's options.
    ``min_fraction``: the per-group floor the method's authors use; the run's floor is the larger of
    this and the configured ``min_fraction``.
    """

    cost_normalizable: bool | Callable[[dict], bool] = True
    min_fraction: float = 0.0

    def normalizable(self, options: dict) -> bool:
        flag = self.cost_normalizable
        return bool(flag(options) if callable(flag) else flag)


POLICIES: dict[str, SelectionPolicy] = {}


def register(name: str, *, cost_normalizable: bool | Callable[[dict], bool] = True, min_fraction: float = 0.0):
    """Decorator: add a saliency function to :data:`METHODS` under ``name``, with its
    :class:`SelectionPolicy`."""
    def decorate(fn: Callable) -> Callable:
        METHODS[name] = fn
        POLICIES[name] = SelectionPolicy(cost_normalizable, min_fraction)
        return fn
    return decorate


def policy(name: str) -> SelectionPolicy:
    _load_baselines()
    return POLICIES.get(name, SelectionPolicy())


def method(name: str) -> Callable:
    _load_baselines()
    if name not in METHODS:
        raise UnknownNameError("saliency method", name, METHODS)
    return METHODS[name]


def _load_baselines() -> None:
    import importlib
    for module in _BASELINE_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise


def score(method_name: str, model: nn.Module, groups: Sequence[ChannelGroup], batches: Iterable,
          *, num_samples: int | None = None, timings: dict | None = None, **options) -> list[torch.Tensor]:
    """Saliency of every structure, one tensor per group (length ``group.size``).

    ``batches`` yields ``(x, y)``; at most ``num_samples`` samples are used (all if None). Unknown
    options raise :class:`ConfigError` naming the option and the valid ones. ``timings``, if given,
    receives the seconds spent (key ``saliency_seconds``). On a terminal a bar counts the batches
    the method reads (:func:`sosp.utils.progress`).
    """
    fn = method(method_name)
    check_options(method_name, fn, options)
    start = time.perf_counter()
    with progress(limit_samples(batches, num_samples), f"scoring {method_name}", unit=" batch") as counted:
        scores = fn(model, groups, counted, **options)
    if timings is not None:
        timings["saliency_seconds"] = time.perf_counter() - start
    scores = [s.detach().to("cpu", torch.float64) for s in scores]
    for g, s in zip(groups, scores):
        if s.shape != (g.size,):
            raise RuntimeError(f"method {method_name!r} returned shape {tuple(s.shape)} for group {g.name}")
        if not torch.isfinite(s).all():
            raise SospError(f"method {method_name!r} produced non-finite saliencies in group {g.name}")
    return scores


def check_options(name: str, fn: Callable, options: dict) -> None:
    params = inspect.signature(fn).parameters
    valid = [p for p, v in params.items() if v.kind == v.KEYWORD_ONLY]
    for key in options:
        if key not in valid:
            raise ConfigError(f"method {name!r} has no option {key!r}; options: {', '.join(valid) or 'none'}")


def limit_samples(batches: Iterable, num_samples: int | None) -> Iterator:
    """The batches, with the last one cut so that exactly ``num_samples`` samples are used."""
    if num_samples is not None and num_samples <= 0:
        raise ConfigError(f"num_samples must be positive, got {num_samples}")
    seen = 0
    for x, y in batches:
        if num_samples is not None:
            if seen >= num_samples:
                return
            x, y = x[: num_samples - seen], y[: num_samples - seen]
        seen += len(x)
        yield x, y


def _to_device(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    p = next(model.parameters())
    return x.to(p.device, p.dtype if x.is_floating_point() else x.dtype), y.to(p.device)


# ---------------------------------------------------------------------------------------------
# SOSP-H


# combine -> (the combinations a g + b G1 it needs, how they make the score). Each combination is one
# reverse pass, so `joint` and `second_order` cost one backward, `separate` two.
SOSP_H_COMBINE = {
    "separate": (((1.0, 0.0), (0.0, 1.0)), lambda v: v[0].abs() + 0.5 * v[1].abs()),
    "joint": (((-1.0, 0.5),), lambda v: v[0].abs()),
    "second_order": (((0.0, 0.5),), lambda v: v[0].abs()),
}
CURVATURE_PRODUCTS = {
    "ggn": curvature.ggn_ones_combinations,
    "hessian": curvature.hessian_ones_combinations,
}


def curvature_combinations(model: nn.Module, groups: Sequence[ChannelGroup], batches: Iterable,
                           curvature: str = "ggn",
                           combinations=curvature.GRADIENT_AND_CURVATURE) -> tuple[list[torch.Tensor], int]:
    """Sample-weighted means over all batches of ``a g + b G 1`` (or ``H 1``) for each ``(a, b)``."""
    if curvature not in CURVATURE_PRODUCTS:
        raise ConfigError(f"curvature must be one of {sorted(CURVATURE_PRODUCTS)}, got {curvature!r}")
    product = CURVATURE_PRODUCTS[curvature]
    sums = None
    n = 0
    for x, y in batches:
        x, y = _to_device(model, x, y)
        vectors = [v * len(x) for v in product(model, groups, x, y, combinations)]
        sums = vectors if sums is None else [s + v for s, v in zip(sums, vectors)]
        n += len(x)
    if n == 0:
        raise SospError("no calibration samples: the batches were empty")
    return [s / n for s in sums], n


def sosp_h_terms(model: nn.Module, groups: Sequence[ChannelGroup], batches: Iterable,
                 curvature: str = "ggn") -> dict:
    """Sample-weighted means of ``g`` and ``G 1`` (or ``H 1``) over all batches."""
    (g, gv), n = curvature_combinations(model, groups, batches, curvature)
    return {"g": g, "Gv": gv, "num_samples": n}


@register("sosp_h")
def sosp_h(model, groups, batches, *, combine: str = "separate", curvature: str = "ggn"):
    """SOSP-H: ``|g_s| + 1/2 |(G 1)_s|``, one GGN-vector product per batch (docs/method.md section 4)."""
    if combine not in SOSP_H_COMBINE:
        raise ConfigError(f"combine must be one of {sorted(SOSP_H_COMBINE)}, got {combine!r}")
    combinations, make_score = SOSP_H_COMBINE[combine]
    vectors, _ = curvature_combinations(model, groups, batches, curvature, combinations)
    return split_flat(make_score(vectors), groups)


# ---------------------------------------------------------------------------------------------
# SOSP-I


def _available_memory_bytes() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def check_pairwise_memory(num_structures: int, dtype: torch.dtype, max_bytes: int | None = None) -> None:
    """SOSP-I holds an ``S x S`` matrix: refuse with a clear message when it cannot fit."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    needed = num_structures ** 2 * itemsize
    budget = max_bytes if max_bytes is not None else _available_memory_bytes() // 2
    if needed > budget:
        raise SospError(
            f"SOSP-I needs the full {num_structures} x {num_structures} curvature matrix "
            f"({needed / 2**30:.2f} GiB) but only {budget / 2**30:.2f} GiB may be used; "
            "use sosp_h, or raise the limit with the option max_bytes")


def sosp_i_terms(model: nn.Module, groups: Sequence[ChannelGroup], batches: Iterable,
                 estimator: str = "exact", mc_samples: int = 1, seed: int = 0,
                 max_bytes: int | None = None) -> dict:
    """Sample-weighted means of ``g`` and the full Gauss-Newton matrix ``G`` (docs/method.md section 3)."""
    if estimator not in ("exact", "mc"):
        raise ConfigError(f"estimator must be 'exact' or 'mc', got {estimator!r}")
    if mc_samples < 1:
        raise ConfigError(f"mc_samples must be at least 1, got {mc_samples}")
    p0 = next(model.parameters())
    num_structures = total_structures(groups)
    check_pairwise_memory(num_structures, p0.dtype, max_bytes)
    G = torch.zeros(num_structures, num_structures, dtype=p0.dtype, device=p0.device)
    g = torch.zeros(num_structures, dtype=p0.dtype, device=p0.device)
    generator = torch.Generator(device=p0.device).manual_seed(seed)
    n = 0
    for x, y in batches:
        x, y = _to_device(model, x, y)
        if estimator == "exact":
            J, logits = curvature.per_sample_jacobians(model, groups, x)
            G += curvature.gauss_newton_exact(J, logits)
            g += curvature.loss_gradient_from_jacobians(J, logits, y)
        else:
            def labels(logits, y=y):
                sampled = torch.multinomial(logits.float().softmax(-1), mc_samples, replacement=True,
                                            generator=generator)
                return torch.cat([y.unsqueeze(1), sampled], dim=1)
            v, _ = curvature.per_sample_gradients(model, groups, x, labels)
            g += v[0].sum(0)
            sampled = v[1:].reshape(-1, num_structures)
            G += sampled.T @ sampled / mc_samples
        n += len(x)
    if n == 0:
        raise SospError("no calibration samples: the batches were empty")
    return {"g": g / n, "G": G / n, "num_samples": n}


@register("sosp_i")
def sosp_i(model, groups, batches, *, estimator: str = "exact", mc_samples: int = 1, seed: int = 0,
           max_bytes: int | None = None):
    """SOSP-I: ``|g_s| + 1/2 sum_s' |G_ss'|`` with the full pairwise curvature (docs/method.md section 3)."""
    terms = sosp_i_terms(model, groups, batches, estimator=estimator, mc_samples=mc_samples,
                         seed=seed, max_bytes=max_bytes)
    return split_flat(terms["g"].abs() + 0.5 * terms["G"].abs().sum(dim=1), groups)
