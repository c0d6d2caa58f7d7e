"""``magnitude``: L1 norm of the producing filters (Li et al., "Pruning Filters for Efficient
ConvNets", ICLR 2017).

A structure's saliency is the L1 norm of its filter, i.e. the output-channel row of the weight of
every producer conv/linear of its group, summed over the group's producers (a residual-stream
channel is written by several convs; all of them lose the filter). Biases and BatchNorm parameters
are not counted, as in the paper.

``scope``:

- ``layerwise`` (default, the paper's protocol): every group loses the same fraction of its channels.
  Selection in :mod:`sosp.selection` is global, so the norms are turned into within-group *mid-point
  ranks* ``(rank - 1/2) / size`` in ``(0, 1)`` (rank 1 = smallest norm). A global cut at saliency
  ``t`` then takes ``round(t * size)`` channels of every group, so removing a fraction ``r`` of all
  structures takes ``r`` of each group up to rounding by one channel. (Deviation from ``rank/size``:
  that form takes ``floor(t * size)`` of each group, a one-sided rounding that makes the cut drift
  above ``r`` and large groups overshoot; the mid-point is symmetric.) Within a group the channels
  with the smallest L1 norms go first, as in the paper; ties keep channel order.
- ``global``: the raw summed L1 norms ranked across all groups (our extension; Li et al. prune
  per layer). Norms of layers with different fan-in are not on a common scale, which is why the
  paper prunes layer by layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from sosp.registry import Option, method
from sosp.structures import ChannelGroup


def filter_l1_norms(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """Sum over the group's producers of each output channel's filter L1 norm (float64), summed over
    the channels of each structure (one channel, or one position of every group of a grouped conv)."""
    modules = dict(model.named_modules())
    total = torch.zeros(group.num_channels, dtype=torch.float64)
    for name in group.producers:
        weight = modules[name].weight.detach()  # Conv*d (out, in/groups, *k), Linear (out, in)
        total += weight.abs().reshape(weight.shape[0], -1).sum(1).double().cpu()
    return group.per_structure(total)


def within_group_ranks(values: torch.Tensor) -> torch.Tensor:
    """Mid-point ranks ``(rank - 1/2) / n`` in ``(0, 1)``; rank 1 = smallest value, ties by index."""
    n = len(values)
    order = sorted(range(n), key=lambda i: (values[i].item(), i))
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = (torch.arange(1, n + 1, dtype=torch.float64) - 0.5) / n
    return ranks


SCOPES = {
    "layerwise": within_group_ranks,
    "global": lambda norms: norms,
}
SCOPE = Option(
    "scope",
    str,
    "layerwise",
    "layerwise: within-group ranks, the same fraction of every group "
    "(the paper's protocol); global: raw norms ranked across groups",
    choices=tuple(SCOPES),
)


@method(
    "magnitude",
    options=(SCOPE,),
    cost_normalizable=lambda options: options["scope"] == "global",
    calibration_terms=(),  # reads no data
)
def magnitude(model: nn.Module, groups: Sequence[ChannelGroup], batches, *, scope: str) -> list[torch.Tensor]:
    """Filter L1 norms (``global``) or their within-group ranks (``layerwise``); data is not read."""
    return [SCOPES[scope](filter_l1_norms(model, g)) for g in groups]
