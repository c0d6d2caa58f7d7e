"""The shared scoring driver: one call that runs any channel-saliency method of :mod:`sosp.methods`.

The methods themselves (SOSP-H, SOSP-I and the baselines) live in :mod:`sosp.methods`, one module each.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn

from .errors import SospError
from .structures import ChannelGroup
from .utils import progress


def score(
    method_name: str,
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    batches: Iterable,
    *,
    num_samples: int | None = None,
    timings: dict | None = None,
    **options,
) -> list[torch.Tensor]:
    """Saliency of every structure, one tensor per group (length ``group.size``).

    ``batches`` yields ``(x, y)``; at most ``num_samples`` samples are used (all if None). Unknown
    options, or values of the wrong type, raise :class:`ConfigError` naming the option (and the valid
    ones); the others take their declared defaults. ``timings``, if given, receives the seconds spent
    (key ``saliency_seconds``). On a terminal a bar counts the batches the method reads
    (:func:`sosp.utils.progress`).
    """
    from . import methods  # when used: the pruners in sosp.methods import sosp.prune, which imports this module

    method = methods.get(method_name, "saliency")
    resolved = method.resolve(options)
    start = time.perf_counter()
    with progress(methods.limit_samples(batches, num_samples), f"scoring {method_name}", unit=" batch") as counted:
        scores = method.fn(model, groups, counted, **resolved)
    if timings is not None:
        timings["saliency_seconds"] = time.perf_counter() - start
    scores = [s.detach().to("cpu", torch.float64) for s in scores]
    for g, s in zip(groups, scores):
        if s.shape != (g.size,):
            raise RuntimeError(f"method {method_name!r} returned shape {tuple(s.shape)} for group {g.name}")
        if not torch.isfinite(s).all():
            raise SospError(f"method {method_name!r} produced non-finite saliencies in group {g.name}")
    return scores
