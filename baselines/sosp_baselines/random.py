"""``random``: uniform random saliencies, the control every pruning criterion must beat."""

from __future__ import annotations

import torch

from sosp.registry import Option, method


@method(
    "random",
    cost_normalizable=False,
    calibration_terms=(),  # reads no data
    options=(Option("seed", int, 0, "seed of the draw (sosp prune: the run's seed)"),),
)
def random_saliency(model, groups, batches, *, seed: int) -> list[torch.Tensor]:
    """The control: uniform in [0, 1) per structure, from a generator seeded with the run's ``seed``.

    The batches are not read: the scores depend on the seed and the group sizes only, so the same
    seed removes the same channels of the same architecture whatever the data.
    """
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(g.size, generator=generator, dtype=torch.float64) for g in groups]
