"""``random``: uniform random saliencies, the control every pruning criterion must beat."""
from __future__ import annotations

import torch

from sosp.errors import ConfigError
from sosp.saliency import register


@register("random", cost_normalizable=False)
def random_saliency(model, groups, batches, *, seed: int = 0):
    """Uniform in [0, 1) per structure, from a generator seeded with the run's ``seed``.

    The batches are not read: the scores depend on the seed and the group sizes only, so the same
    seed removes the same channels of the same architecture whatever the data.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(g.size, generator=generator, dtype=torch.float64) for g in groups]
