"""``cobd``: channel OBD with the diagonal Fisher, the C-OBD baseline of Wang, Zhang, Wang, Grosse,
"EigenDamage: Structured Pruning in the Kronecker-Factored Eigenbasis", ICML 2019.

Saliency of an output channel ``= sum_j W_ij^2 F_ij`` over its filter and bias, summed over the
group's producers, with ``F`` the **exact** diagonal of the sampled-label Fisher
(:mod:`sosp_baselines.fisher`): per-sample weight gradients ``sum_t g_{n,t} a_{n,t}^T`` (unfolded patches
for conv) squared and averaged over samples, as their ``FisherDiagPruner`` (no K-FAC approximation).
This is what ``torch.func.vmap(grad)`` would give, computed layer by layer from hooks so memory stays
at one layer's per-sample gradients (chunked) instead of the whole model's. Their code divides by the
number of batches instead of samples: a common scale, irrelevant for the ranking. Every group keeps
at least 5 % of its channels (:data:`~sosp_baselines.fisher.AUTHORS_MIN_FRACTION`), as their code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn

from sosp.errors import UnsupportedModelError
from sosp.registry import Option, method
from sosp.structures import ChannelGroup
from sosp_baselines.fisher import AUTHORS_MIN_FRACTION, conv_patches, output_rows, sampled_fisher_passes

CHUNK_ELEMENTS = 1 << 25  # per-sample gradients held at once


def per_sample_weight_grads(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``(B, out, fan_in [+1])``: exact per-sample gradients of the weight rows (and bias)."""
    g = output_rows(module, grad)  # (B, T, out)
    if isinstance(module, nn.Conv2d):
        B, groups = len(x), module.groups
        a = conv_patches(module, x).view(B, groups, -1, g.shape[1])  # (B, G, fan_in, L)
        gg = g.transpose(1, 2).reshape(B, groups, -1, g.shape[1])  # (B, G, out/G, L)
        w = torch.einsum("bgol,bgpl->bgop", gg, a).reshape(B, module.out_channels, -1)
    elif isinstance(module, nn.Linear):
        w = torch.einsum("bto,bti->boi", g, x.reshape(len(x), -1, x.shape[-1]))
    else:
        raise UnsupportedModelError(f"cobd supports Conv2d and Linear producers, not {type(module).__name__}")
    if module.bias is not None:
        w = torch.cat([w, g.sum(1).unsqueeze(-1)], dim=-1)
    return w


def weight_rows(module: nn.Module) -> torch.Tensor:
    """``(out, fan_in [+1])``: each output channel's filter (and bias), as cobd scores it."""
    w = module.weight.detach().reshape(module.weight.shape[0], -1)
    return torch.cat([w, module.bias.detach().unsqueeze(-1)], dim=-1) if module.bias is not None else w


def fisher_diagonal(
    model: nn.Module, batches: Iterable, layers: dict[str, nn.Module], seed: int = 0
) -> dict[str, torch.Tensor]:
    """``E_n[(dl_n/dW_ij)^2]`` (sampled labels) per layer, shaped as :func:`weight_rows`, float64."""
    sums: dict[str, torch.Tensor] = {}

    def on_layer(name, module, x, grad):
        per_sample_elements = weight_rows(module).numel()
        step = max(1, CHUNK_ELEMENTS // per_sample_elements)
        for i in range(0, len(x), step):
            sq = per_sample_weight_grads(module, x[i : i + step], grad[i : i + step]).pow(2).sum(0).double()
            sums[name] = sums[name] + sq if name in sums else sq

    n = sampled_fisher_passes(model, batches, layers, on_layer, seed)
    return {name: s / n for name, s in sums.items()}


@method(
    "cobd",
    min_fraction=AUTHORS_MIN_FRACTION,
    calibration_terms=("curvature",),  # the sampled-label Fisher
    options=(Option("seed", int, 0, "seed of the sampled labels (sosp prune: the run's seed)"),),
)
def cobd(model: nn.Module, groups: Sequence[ChannelGroup], batches, *, seed: int) -> list[torch.Tensor]:
    """Channel OBD: ``sum_j W_ij^2 F_ij`` over each producer's filter and bias, summed per group."""
    modules = dict(model.named_modules())
    layers = {name: modules[name] for g in groups for name in g.producers}
    fisher = fisher_diagonal(model, batches, layers, seed)
    scores = []
    for g in groups:
        total = torch.zeros(g.num_channels, dtype=torch.float64, device=next(model.parameters()).device)
        for name in g.producers:
            total += (weight_rows(layers[name]).double().pow(2) * fisher[name]).sum(1)
        scores.append(g.per_structure(total))  # a grouped conv's structure: the sum over its channels
    return scores
