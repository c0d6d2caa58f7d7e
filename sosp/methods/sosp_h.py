"""``sosp_h``: SOSP-H, ``|g_s| + 1/2 |(G 1)_s|`` from one Gauss-Newton-vector product per batch
(docs/method.md section 4; the options and their costs: docs/method_choices.md)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn

from sosp.batches import to_device
from sosp.curvature import GRADIENT_AND_CURVATURE, ggn_ones_combinations, hessian_ones_combinations
from sosp.errors import ConfigError, SospError
from sosp.registry import Option, method
from sosp.structures import ChannelGroup, split_flat

# combine -> (the combinations a g + b G1 it needs, how they make the score). Each combination is one
# reverse pass, so `joint` and `second_order` cost one backward, `separate` two.
SOSP_H_COMBINE = {
    "separate": (((1.0, 0.0), (0.0, 1.0)), lambda v: v[0].abs() + 0.5 * v[1].abs()),
    "joint": (((-1.0, 0.5),), lambda v: v[0].abs()),
    "second_order": (((0.0, 0.5),), lambda v: v[0].abs()),
}
CURVATURE_PRODUCTS = {
    "ggn": ggn_ones_combinations,
    "hessian": hessian_ones_combinations,
}

COMBINE = Option(
    "combine",
    str,
    "separate",
    "separate: |g| + 1/2 |G 1|; joint: |-g + 1/2 G 1|; second_order: 1/2 |G 1|",
    choices=tuple(SOSP_H_COMBINE),
)
CURVATURE = Option(
    "curvature",
    str,
    "ggn",
    "ggn: Gauss-Newton G; hessian: exact Hessian-vector product H 1",
    choices=tuple(CURVATURE_PRODUCTS),
)


def curvature_combinations(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    batches: Iterable,
    curvature: str = CURVATURE.default,
    combinations=GRADIENT_AND_CURVATURE,
) -> tuple[list[torch.Tensor], int]:
    """Sample-weighted means over all batches of ``a g + b G 1`` (or ``H 1``) for each ``(a, b)``."""
    if curvature not in CURVATURE_PRODUCTS:
        raise ConfigError(f"curvature must be one of {sorted(CURVATURE_PRODUCTS)}, got {curvature!r}")
    product = CURVATURE_PRODUCTS[curvature]
    sums = None
    n = 0
    for x, y in batches:
        x, y = to_device(model, x, y)
        vectors = [v * len(x) for v in product(model, groups, x, y, combinations)]
        sums = vectors if sums is None else [s + v for s, v in zip(sums, vectors)]
        n += len(x)
    if n == 0:
        raise SospError("no calibration samples: the batches were empty")
    return [s / n for s in sums], n


def sosp_h_terms(
    model: nn.Module, groups: Sequence[ChannelGroup], batches: Iterable, curvature: str = CURVATURE.default
) -> dict:
    """Sample-weighted means of ``g`` and ``G 1`` (or ``H 1``) over all batches."""
    (g, gv), n = curvature_combinations(model, groups, batches, curvature)
    return {"g": g, "Gv": gv, "num_samples": n}


@method("sosp_h", options=(COMBINE, CURVATURE))
def sosp_h(model, groups, batches, *, combine: str, curvature: str) -> list[torch.Tensor]:
    """SOSP-H: ``|g_s| + 1/2 |(G 1)_s|``, one GGN-vector product per batch (docs/method.md section 4)."""
    combinations, make_score = SOSP_H_COMBINE[combine]
    vectors, _ = curvature_combinations(model, groups, batches, curvature, combinations)
    return split_flat(make_score(vectors), groups)
