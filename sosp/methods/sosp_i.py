"""``sosp_i``: SOSP-I, ``|g_s| + 1/2 sum_s' |G_ss'|`` with the full pairwise curvature matrix
(docs/method.md section 3; the options: docs/method_choices.md)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn

from sosp import curvature
from sosp.batches import to_device
from sosp.errors import ConfigError, SospError
from sosp.registry import Option, method
from sosp.structures import ChannelGroup, split_flat, total_structures

ESTIMATOR = Option(
    "estimator",
    str,
    "exact",
    "exact: every per-sample Jacobian (C reverse passes per batch); "
    "mc: Monte-Carlo Fisher with mc_samples sampled labels per sample",
    choices=("exact", "mc"),
)
MC_SAMPLES = Option("mc_samples", int, 1, "labels drawn per sample by the mc estimator")
SEED = Option("seed", int, 0, "seed of the mc estimator's label sampling (sosp prune: the run's seed)")
MAX_BYTES = Option("max_bytes", int, None, "bytes the S x S matrix may take (none: half of the free memory)")


def _available_memory_bytes() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def check_pairwise_memory(num_structures: int, dtype: torch.dtype, max_bytes: int | None = None) -> None:
    """SOSP-I holds an ``S x S`` matrix: refuse with a clear message when it cannot fit."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    needed = num_structures**2 * itemsize
    budget = max_bytes if max_bytes is not None else _available_memory_bytes() // 2
    if needed > budget:
        raise SospError(
            f"SOSP-I needs the full {num_structures} x {num_structures} curvature matrix "
            f"({needed / 2**30:.2f} GiB) but only {budget / 2**30:.2f} GiB may be used; "
            "use sosp_h, or raise the limit with the option max_bytes"
        )


def sosp_i_terms(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    batches: Iterable,
    estimator: str = ESTIMATOR.default,
    mc_samples: int = MC_SAMPLES.default,
    seed: int = SEED.default,
    max_bytes: int | None = MAX_BYTES.default,
) -> dict:
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
        x, y = to_device(model, x, y)
        if estimator == "exact":
            J, logits = curvature.per_sample_jacobians(model, groups, x)
            G += curvature.gauss_newton_exact(J, logits)
            g += curvature.loss_gradient_from_jacobians(J, logits, y)
        else:

            def labels(logits, y=y):
                sampled = torch.multinomial(
                    logits.float().softmax(-1), mc_samples, replacement=True, generator=generator
                )
                return torch.cat([y.unsqueeze(1), sampled], dim=1)

            v, _ = curvature.per_sample_gradients(model, groups, x, labels)
            g += v[0].sum(0)
            sampled = v[1:].reshape(-1, num_structures)
            G += sampled.T @ sampled / mc_samples
        n += len(x)
    if n == 0:
        raise SospError("no calibration samples: the batches were empty")
    return {"g": g / n, "G": G / n, "num_samples": n}


@method("sosp_i", options=(ESTIMATOR, MC_SAMPLES, SEED, MAX_BYTES))
def sosp_i(
    model, groups, batches, *, estimator: str, mc_samples: int, seed: int, max_bytes: int | None
) -> list[torch.Tensor]:
    """SOSP-I: ``|g_s| + 1/2 sum_s' |G_ss'|`` with the full pairwise curvature (docs/method.md section 3)."""
    terms = sosp_i_terms(
        model, groups, batches, estimator=estimator, mc_samples=mc_samples, seed=seed, max_bytes=max_bytes
    )
    return split_flat(terms["g"].abs() + 0.5 * terms["G"].abs().sum(dim=1), groups)
