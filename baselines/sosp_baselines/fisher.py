"""The sampled-label Fisher shared by ``cobd`` and ``eigendamage`` (Wang, Zhang, Wang, Grosse,
"EigenDamage: Structured Pruning in the Kronecker-Factored Eigenbasis", ICML 2019, and their C-OBD
baseline): per-layer passes with labels sampled from the model, and the K-FAC factors.

Sampled-label passes (:func:`sampled_fisher_passes`): eval mode, frozen parameters, for every
calibration batch one forward pass, labels **sampled from the model's softmax** (the true Fisher,
the paper's ``fisher_type="true"``) with ``torch.multinomial(logits.softmax(-1), 1, generator=g)``,
``g = torch.Generator(device).manual_seed(seed)`` drawn batch after batch, then one backward pass of
the *summed* per-sample losses, so every layer sees per-sample output gradients ``g_n = dl_n/ds_n``.

K-FAC factors per Conv2d/Linear layer (:func:`kfac_factors`), with the scaling of KFC (Grosse &
Martens 2016) so that ``A (x) S`` approximates the Fisher on one scale across layers (the global pool
needs it): ``A = E_n[mean_r a_{n,r} a_{n,r}^T]`` and ``S = E_n[sum_t g_{n,t} g_{n,t}^T]`` (``t`` = output
positions). For a Linear layer the rows ``r`` are the sample's input vector(s). For a conv layer we
follow the EigenDamage code's default ``use_patch=True``: ``A`` lives in **channel space**
(``in_channels`` x ``in_channels``), the rows ``r`` being the input-channel vectors at every (output
position, kernel offset) pair of the zero-padded input (their ``ComputeCovAPatch``). This is K-FAC's
patch-space factor with its ``kh*kw`` diagonal blocks averaged and the cross-offset blocks dropped
(``A_patch ~ I_P (x) A``), so its eigenbasis acts on channels and becomes a 1x1 convolution. A bias
adds one constant input column, ``1`` for Linear and ``1/(kh*kw)`` for conv (as in their code), so
that summing the bias column over the ``kh*kw`` offsets gives the bias once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from sosp.curvature import scoring_mode
from sosp.errors import SospError

#: per-layer floor of EigenDamage's and C-OBD's authors (their ``prune_ratio_limit=0.95``): every layer
#: keeps at least 5 % of its channels / eigen-directions per side
AUTHORS_MIN_FRACTION = 0.05

# ---------------------------------------------------------------------------------------------
# Sampled-label passes


def sample_labels(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One label per sample from the model's predictive distribution (the true Fisher)."""
    return torch.multinomial(logits.detach().softmax(-1), 1, generator=generator).squeeze(1)


def sampled_fisher_passes(
    model: nn.Module, batches: Iterable, layers: dict[str, nn.Module], on_layer: Callable, seed: int = 0
) -> int:
    """Call ``on_layer(name, module, input, output_grad)`` for every layer and batch; return ``N``.

    ``output_grad`` is per sample: the backward pass is of ``sum_n l(f_n, y~_n)``. Each layer's output
    is replaced by a clone so that in-place ops after it (ReLU(inplace)) leave the tapped tensor alone.
    """
    p = next(model.parameters())
    generator = torch.Generator(device=p.device).manual_seed(seed)
    saved: dict[str, list] = {}

    def tap(name):
        def hook(module, args, output):
            saved.setdefault(name, []).append(args[0].detach())
            output.register_hook(lambda g: on_layer(name, module, saved[name].pop(), g.detach()))
            return output.clone()

        return hook

    n = 0
    with scoring_mode(model):
        handles = [m.register_forward_hook(tap(name)) for name, m in layers.items()]
        try:
            for x, _ in batches:  # the data labels are not used: the true Fisher samples its own
                x = x.detach().to(p.device, p.dtype).requires_grad_(True)
                logits = model(x)
                loss = F.cross_entropy(logits, sample_labels(logits, generator), reduction="sum")
                torch.autograd.grad(loss, x)
                saved.clear()
                n += len(x)
        finally:
            for h in handles:
                h.remove()
    if n == 0:
        raise SospError("no calibration samples: the batches were empty")
    return n


def conv_patches(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``(B, in * kh * kw, L)``: the conv's input patches, padded as the conv pads."""
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    x = F.pad(x, conv._reversed_padding_repeated_twice, mode=mode)
    return F.unfold(x, conv.kernel_size, dilation=conv.dilation, stride=conv.stride)


def output_rows(module: nn.Module, grad: torch.Tensor) -> torch.Tensor:
    """``(B, T, out)``: per-sample output gradients, one row per output position."""
    if isinstance(module, nn.Conv2d):
        return grad.flatten(2).transpose(1, 2)
    return grad.reshape(len(grad), -1, grad.shape[-1])


# ---------------------------------------------------------------------------------------------
# K-FAC factors


@dataclass
class KFACFactors:
    A: torch.Tensor  # (in [+1]) x (in [+1]), float64
    S: torch.Tensor  # out x out, float64


def bias_column_value(module: nn.Module) -> float:
    """The constant input paired with the bias: summed over the kernel offsets it gives the bias once."""
    return 1.0 / (module.kernel_size[0] * module.kernel_size[1]) if isinstance(module, nn.Conv2d) else 1.0


def input_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(B, R, in [+1])``: the vectors whose mean outer product per sample is ``A`` (channel space)."""
    if isinstance(module, nn.Conv2d):
        patches = conv_patches(module, x)  # (B, in * P, L)
        rows = patches.view(len(x), module.in_channels, -1).transpose(1, 2)  # (B, P * L, in)
    else:
        rows = x.reshape(len(x), -1, x.shape[-1])
    if module.bias is not None:
        rows = torch.cat([rows, rows.new_full((*rows.shape[:2], 1), bias_column_value(module))], dim=-1)
    return rows


def kfac_factors(
    model: nn.Module, batches: Iterable, layers: dict[str, nn.Module], seed: int = 0
) -> dict[str, KFACFactors]:
    """``A = E_n[mean_r a a^T]`` and ``S = E_n[sum_t g g^T]`` for every layer (module docstring)."""
    sums_a: dict[str, torch.Tensor] = {}
    sums_s: dict[str, torch.Tensor] = {}

    def add(store, name, value):
        store[name] = store[name] + value if name in store else value

    def on_layer(name, module, x, grad):
        rows = input_rows(module, x)
        flat = rows.reshape(-1, rows.shape[-1])
        add(sums_a, name, (flat.T @ flat).double() / rows.shape[1])
        g = output_rows(module, grad)
        g = g.reshape(-1, g.shape[-1])
        add(sums_s, name, (g.T @ g).double())

    n = sampled_fisher_passes(model, batches, layers, on_layer, seed)
    return {name: KFACFactors(A=sums_a[name] / n, S=sums_s[name] / n) for name in sums_a}
