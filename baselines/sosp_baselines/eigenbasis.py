"""The eigenbasis of a layer's K-FAC factors and the layer reparameterised in it (EigenDamage's surgery,
:mod:`sosp_baselines.eigendamage`).

``A = Q_A diag(lambda_A) Q_A^T``, ``S = Q_S diag(lambda_S) Q_S^T``; :class:`EigenBasisLayer` is
``1x1 conv (Q_A^T, kept columns) -> core conv (W*, kept out x kept in, same kernel/stride/padding/
dilation) -> 1x1 conv (Q_S, kept columns)`` (Linear layers: three Linear layers), all three ordinary
trainable modules. A bias becomes the bias of the first 1x1 conv (the constant input column rotated);
where the core conv pads, the zero padding is moved in front of that 1x1 conv so the rotated constant
reaches the border taps too and the reparameterised layer is exact. Reparameterising a layer that is
already in an eigenbasis folds the new rotations into its existing 1x1 convs.

Saved models hold :class:`EigenBasisLayer` instances, so loading one imports this module by its class
path (the suite itself never imports the baselines).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from sosp_baselines.fisher import KFACFactors, bias_column_value


@dataclass
class Eigenbasis:
    Q_A: torch.Tensor
    lambda_A: torch.Tensor
    Q_S: torch.Tensor
    lambda_S: torch.Tensor


def eigenbasis(factors: KFACFactors) -> Eigenbasis:
    """Eigendecompositions (ascending eigenvalues; round-off negatives clipped to 0)."""
    lam_a, q_a = torch.linalg.eigh(factors.A)
    lam_s, q_s = torch.linalg.eigh(factors.S)
    return Eigenbasis(q_a, lam_a.clamp_min(0), q_s, lam_s.clamp_min(0))


class EigenBasisLayer(nn.Sequential):
    """``[pad ->] rotate_in (Q_A^T) -> core (W*) -> rotate_out (Q_S)``: a layer in its eigenbasis."""


def layer_core(layer: nn.Module) -> nn.Module:
    return layer.core if isinstance(layer, EigenBasisLayer) else layer


def _rotation_in(layer: nn.Module):
    """``(R, r)``: the map from the layer's input to its core's input (identity for a plain layer)."""
    if not isinstance(layer, EigenBasisLayer):
        return None, None
    r = layer.rotate_in
    bias = r.bias.detach().double() if r.bias is not None else None
    return r.weight.detach().double().reshape(r.weight.shape[0], -1), bias


def _rotation_out(layer: nn.Module):
    if not isinstance(layer, EigenBasisLayer):
        return None
    return layer.rotate_out.weight.detach().double().reshape(layer.rotate_out.weight.shape[0], -1)


def _rotation(core: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A 1x1 conv (for a conv ``core``) or Linear holding ``weight`` (out x in) and ``bias``."""
    out_dim, in_dim = weight.shape
    kw = dict(dtype=core.weight.dtype, device=core.weight.device)
    if isinstance(core, nn.Conv2d):
        new = nn.Conv2d(in_dim, out_dim, 1, bias=bias is not None, **kw)
        weight = weight[:, :, None, None]
    else:
        new = nn.Linear(in_dim, out_dim, bias=bias is not None, **kw)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def _newlayer_core(core: nn.Module, w_star: torch.Tensor, pad_moved: bool) -> nn.Module:
    """The core layer with weights ``W*`` (``(P, out, in)``), no bias."""
    _, out_dim, in_dim = w_star.shape
    kw = dict(dtype=core.weight.dtype, device=core.weight.device)
    if isinstance(core, nn.Conv2d):
        new = nn.Conv2d(
            in_dim,
            out_dim,
            core.kernel_size,
            core.stride,
            0 if pad_moved else core.padding,
            core.dilation,
            bias=False,
            **kw,
        )
        weight = w_star.permute(1, 2, 0).reshape(out_dim, in_dim, *core.kernel_size)
    else:
        new = nn.Linear(in_dim, out_dim, bias=False, **kw)
        weight = w_star[0]
    with torch.no_grad():
        new.weight.copy_(weight)
    return new


def eigenbasis_layer(
    layer: nn.Module, basis: Eigenbasis, w_star: torch.Tensor, keep_in: Sequence[int], keep_out: Sequence[int]
) -> EigenBasisLayer:
    """``layer`` (plain or already reparameterised) in the eigenbasis, keeping the given directions."""
    core = layer_core(layer)
    keep_in, keep_out = list(keep_in), list(keep_out)
    in_core = core.in_channels if isinstance(core, nn.Conv2d) else core.in_features
    q_in = basis.Q_A[:in_core][:, keep_in]  # (in_core, kept)
    r, r_bias = _rotation_in(layer)
    weight_in = q_in.T if r is None else q_in.T @ r
    bias_in = None if r_bias is None else q_in.T @ r_bias
    if core.bias is not None:
        const = bias_column_value(core) * basis.Q_A[in_core][keep_in]
        bias_in = const if bias_in is None else bias_in + const
    r_out = _rotation_out(layer)
    q_out = basis.Q_S[:, keep_out]
    weight_out = q_out if r_out is None else r_out @ q_out
    pad = layer.pad if isinstance(layer, EigenBasisLayer) and "pad" in layer._modules else None
    if pad is None and isinstance(core, nn.Conv2d) and bias_in is not None and any(core.padding):
        ph, pw = core.padding  # the rotated bias must reach the border taps: pad before rotating
        pad = nn.ZeroPad2d((pw, pw, ph, ph))
    parts = OrderedDict([("pad", copy.deepcopy(pad))] if pad is not None else [])
    parts["rotate_in"] = _rotation(core, weight_in, bias_in)
    parts["core"] = _newlayer_core(core, w_star[:, keep_out][:, :, keep_in], pad_moved=pad is not None)
    parts["rotate_out"] = _rotation(core, weight_out, None)
    return EigenBasisLayer(parts)


def direction_counts(layer: nn.Module) -> tuple[int, int]:
    """``(input directions, output directions)``: a plain layer counts its bias column as an input."""
    core = layer_core(layer)
    fan_in, fan_out = (
        (core.in_channels, core.out_channels) if isinstance(core, nn.Conv2d) else (core.in_features, core.out_features)
    )
    return fan_in + (core.bias is not None), fan_out
