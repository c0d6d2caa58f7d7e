"""Helpers of the methods' batch loops: a sample budget over a stream of batches, and moving a batch
to the model. Every method module (SOSP's and the baselines') uses these, so they sit below them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    import torch
    import torch.nn as nn


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


def to_device(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """``(x, y)`` on the model's device, ``x`` in its dtype if floating."""
    p = next(model.parameters())
    return x.to(p.device, p.dtype if x.is_floating_point() else x.dtype), y.to(p.device)
