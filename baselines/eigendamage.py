"""EigenDamage (Wang, Zhang, Wang, Grosse, "EigenDamage: Structured Pruning in the Kronecker-Factored
Eigenbasis", ICML 2019) and ``cobd`` (channel OBD with the diagonal Fisher, their C-OBD baseline).

Shared Fisher machinery (:func:`sampled_fisher_passes`): eval mode, frozen parameters, for every
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

EigenDamage: ``A = Q_A diag(lambda_A) Q_A^T``, ``S = Q_S diag(lambda_S) Q_S^T``; per kernel offset ``k``
``W*_k = Q_S^T [W_k, b] Q_A``; importance ``I_ij = sum_k (W*_kij)^2 lambda_S,i lambda_A,j`` (the Fisher
quadratic form of deleting that weight in the eigenbasis); row sums score the output
eigen-directions, column sums the input ones. All directions of all layers (every Conv2d/Linear
except the classifier, as their code) form one global pool; the fraction ``ratio`` of them with the
lowest importance is removed, keeping at least ``max(min_channels, ceil(min_fraction * n))`` of the ``n``
directions per side per layer; ``min_fraction`` is at least 5 % (:data:`AUTHORS_MIN_FRACTION`), as
their code's ``prune_ratio_limit=0.95``. Each layer becomes :class:`EigenBasisLayer`:
``1x1 conv (Q_A^T, kept columns) -> core conv (W*, kept out x kept in, same kernel/stride/padding/
dilation) -> 1x1 conv (Q_S, kept columns)`` (Linear layers: three Linear layers), kept only if it has no
more parameters than the layer it replaces. All three are ordinary trainable modules (their
``fix_rotation=False`` default). A bias becomes the bias of the first 1x1 conv (the constant input
column rotated); where the core conv pads, the zero padding is moved in front of that 1x1 conv so the
rotated constant reaches the border taps too and the reparameterised layer is exact (their code pads
after the rotation, which is not exact at the borders). Layers the reparameterisation cannot express
(grouped convs, non-zero padding modes, string padding) are left as they are and listed in the
report.

``mode``: ``one_pass`` (default) or ``iterative``: ``steps`` rounds, each recomputing the factors of
the current network (for a reparameterised layer, of its core conv, whose new rotations are folded
into the existing 1x1 convs, as their ``_merge_Qs``) and removing directions until the cumulative
fraction ``ratio * step / steps`` of the original directions is gone. Their protocol fine-tunes
between rounds; here ``finetune_fn(model, batches)`` does so if given (default: no fine-tuning).

``cobd``: saliency of an output channel ``= sum_j W_ij^2 F_ij`` over its filter and bias, summed over
the group's producers, with ``F`` the **exact** diagonal of the sampled-label Fisher: per-sample weight
gradients ``sum_t g_{n,t} a_{n,t}^T`` (unfolded patches for conv) squared and averaged over samples,
as their ``FisherDiagPruner`` (no K-FAC approximation). This is what ``torch.func.vmap(grad)`` would
give, computed layer by layer from hooks so memory stays at one layer's per-sample gradients
(chunked) instead of the whole model's. Their code divides by the number of batches instead of
samples: a common scale, irrelevant for the ranking.
"""
from __future__ import annotations

import copy
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from sosp import measure
from sosp import prune as sosp_prune
from sosp.curvature import scoring_mode
from sosp.errors import ConfigError, SospError, UnsupportedModelError, check_positive_int

#: per-layer floor of EigenDamage's and C-OBD's authors (their ``prune_ratio_limit=0.95``): every layer
#: keeps at least 5 % of its channels / eigen-directions per side
AUTHORS_MIN_FRACTION = 0.05
from sosp.saliency import limit_samples, register
from sosp.structures import ChannelGroup, classifier_name
from sosp.utils import progress

CHUNK_ELEMENTS = 1 << 25  # per-sample gradients held at once by cobd


# ---------------------------------------------------------------------------------------------
# Sampled-label passes


def sample_labels(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One label per sample from the model's predictive distribution (the true Fisher)."""
    return torch.multinomial(logits.detach().softmax(-1), 1, generator=generator).squeeze(1)


def sampled_fisher_passes(model: nn.Module, batches: Iterable, layers: dict[str, nn.Module],
                          on_layer: Callable, seed: int = 0) -> int:
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
# cobd


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


def fisher_diagonal(model: nn.Module, batches: Iterable, layers: dict[str, nn.Module],
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """``E_n[(dl_n/dW_ij)^2]`` (sampled labels) per layer, shaped as :func:`weight_rows`, float64."""
    sums: dict[str, torch.Tensor] = {}

    def on_layer(name, module, x, grad):
        per_sample_elements = weight_rows(module).numel()
        step = max(1, CHUNK_ELEMENTS // per_sample_elements)
        for i in range(0, len(x), step):
            sq = per_sample_weight_grads(module, x[i:i + step], grad[i:i + step]).pow(2).sum(0).double()
            sums[name] = sums[name] + sq if name in sums else sq

    n = sampled_fisher_passes(model, batches, layers, on_layer, seed)
    return {name: s / n for name, s in sums.items()}


@register("cobd", min_fraction=AUTHORS_MIN_FRACTION)
def cobd(model: nn.Module, groups: Sequence[ChannelGroup], batches, *, seed: int = 0):
    """Channel OBD: ``sum_j W_ij^2 F_ij`` over each producer's filter and bias, summed per group."""
    modules = dict(model.named_modules())
    layers = {name: modules[name] for g in groups for name in g.producers}
    fisher = fisher_diagonal(model, batches, layers, seed)
    scores = []
    for g in groups:
        total = torch.zeros(g.size, dtype=torch.float64, device=next(model.parameters()).device)
        for name in g.producers:
            total += (weight_rows(layers[name]).double().pow(2) * fisher[name]).sum(1)
        scores.append(total)
    return scores


# ---------------------------------------------------------------------------------------------
# K-FAC factors and the eigenbasis


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


def kfac_factors(model: nn.Module, batches: Iterable, layers: dict[str, nn.Module],
                 seed: int = 0) -> dict[str, KFACFactors]:
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


def weight_per_offset(module: nn.Module) -> torch.Tensor:
    """``(P, out, in [+1])``: ``[W_k, b]`` for every kernel offset ``k`` (``P = 1`` for Linear)."""
    w = module.weight.detach().double()
    w = w.permute(2, 3, 0, 1).reshape(-1, w.shape[0], w.shape[1]) if isinstance(module, nn.Conv2d) else w[None]
    if module.bias is not None:
        b = module.bias.detach().double()
        w = torch.cat([w, b.expand(w.shape[0], -1).unsqueeze(-1)], dim=-1)
    return w


def eigen_importance(weights: torch.Tensor, basis: Eigenbasis):
    """``(W*, importance of output directions, importance of input directions)``."""
    w_star = basis.Q_S.T @ weights @ basis.Q_A
    imp = w_star.pow(2).sum(0) * torch.outer(basis.lambda_S, basis.lambda_A)
    return w_star, imp.sum(1), imp.sum(0)


# ---------------------------------------------------------------------------------------------
# Reparameterisation


class EigenBasisLayer(nn.Sequential):
    """``[pad ->] rotate_in (Q_A^T) -> core (W*) -> rotate_out (Q_S)``: a layer in its eigenbasis."""


def _core(layer: nn.Module) -> nn.Module:
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


def _new_core(core: nn.Module, w_star: torch.Tensor, pad_moved: bool) -> nn.Module:
    """The core layer with weights ``W*`` (``(P, out, in)``), no bias."""
    _, out_dim, in_dim = w_star.shape
    kw = dict(dtype=core.weight.dtype, device=core.weight.device)
    if isinstance(core, nn.Conv2d):
        new = nn.Conv2d(in_dim, out_dim, core.kernel_size, core.stride, 0 if pad_moved else core.padding,
                        core.dilation, bias=False, **kw)
        weight = w_star.permute(1, 2, 0).reshape(out_dim, in_dim, *core.kernel_size)
    else:
        new = nn.Linear(in_dim, out_dim, bias=False, **kw)
        weight = w_star[0]
    with torch.no_grad():
        new.weight.copy_(weight)
    return new


def eigenbasis_layer(layer: nn.Module, basis: Eigenbasis, w_star: torch.Tensor,
                     keep_in: Sequence[int], keep_out: Sequence[int]) -> EigenBasisLayer:
    """``layer`` (plain or already reparameterised) in the eigenbasis, keeping the given directions."""
    core = _core(layer)
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
    parts["core"] = _new_core(core, w_star[:, keep_out][:, :, keep_in], pad_moved=pad is not None)
    parts["rotate_out"] = _rotation(core, weight_out, None)
    return EigenBasisLayer(parts)


def _supported(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return (isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"
            and not isinstance(module.padding, str))


def candidate_layers(model: nn.Module, example_input: torch.Tensor) -> tuple[dict, list[str]]:
    """``({name: layer}, skipped)``: every Conv2d/Linear (or reparameterised layer) but the classifier."""
    classifier = classifier_name(model, example_input)
    layers, skipped, inside = {}, [], []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in inside) or name == classifier:
            continue
        if isinstance(module, EigenBasisLayer):
            layers[name] = module
            inside.append(name)
        elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            if _supported(module):
                layers[name] = module
            else:
                skipped.append(name)
    return layers, skipped


def direction_counts(layer: nn.Module) -> tuple[int, int]:
    """``(input directions, output directions)``: a plain layer counts its bias column as an input."""
    core = _core(layer)
    fan_in, fan_out = (core.in_channels, core.out_channels) if isinstance(core, nn.Conv2d) else \
        (core.in_features, core.out_features)
    return fan_in + (core.bias is not None), fan_out


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


# ---------------------------------------------------------------------------------------------
# Scoring, global selection and one round of surgery


@dataclass
class LayerScores:
    basis: Eigenbasis
    w_star: torch.Tensor
    imp_in: torch.Tensor
    imp_out: torch.Tensor


def score_layers(model: nn.Module, batches: Iterable, layers: dict[str, nn.Module],
                 seed: int = 0) -> dict[str, LayerScores]:
    """Factors, eigenbases and direction importances of every candidate layer (in model order)."""
    factors = kfac_factors(model, batches, {name: _core(layer) for name, layer in layers.items()}, seed)
    scores = {}
    for name, layer in layers.items():
        if name in factors:  # a layer the forward pass never reached has no factors and stays
            basis = eigenbasis(factors[name])
            w_star, imp_out, imp_in = eigen_importance(weight_per_offset(_core(layer)), basis)
            scores[name] = LayerScores(basis, w_star, imp_in, imp_out)
    return scores


def direction_order(scores: dict[str, LayerScores], min_channels: int = 1,
                    min_fraction: float = AUTHORS_MIN_FRACTION) -> list[tuple[str, str, int]]:
    """Every removable ``(layer, side, direction)``, lowest importance first (ties by position),
    never taking a side of a layer below its floor (:func:`sosp.prune.group_floor`)."""
    entries = [(name, side, i, float(v)) for name, s in scores.items()
               for side, imp in (("in", s.imp_in), ("out", s.imp_out)) for i, v in enumerate(imp)]
    order = sorted(range(len(entries)), key=lambda j: (entries[j][3], j))
    left = {(name, side): len(imp) for name, s in scores.items()
            for side, imp in (("in", s.imp_in), ("out", s.imp_out))}
    floor = {key: sosp_prune.group_floor(n, min_channels, min_fraction) for key, n in left.items()}
    chosen = []
    for j in order:
        name, side, i, _ = entries[j]
        if left[name, side] > floor[name, side]:
            left[name, side] -= 1
            chosen.append((name, side, i))
    return chosen


def reparameterise(model: nn.Module, scores: dict[str, LayerScores], removal: Sequence[tuple[str, str, int]],
                   only_if_smaller: bool = True) -> tuple[nn.Module, dict[str, dict[str, list[int]]]]:
    """A copy of ``model`` with every scored layer in its eigenbasis minus the ``removal`` directions.

    A layer losing nothing stays as it is, and (``only_if_smaller``) so does one whose reparameterised
    form would have more parameters. Returns the model and, per replaced layer, the removed directions.
    """
    removed: dict[str, dict[str, set]] = {name: {"in": set(), "out": set()} for name in scores}
    for name, side, i in removal:
        removed[name][side].add(i)
    new = copy.deepcopy(model)
    done = {}
    for name, s in scores.items():
        gone = removed[name]
        if only_if_smaller and not (gone["in"] or gone["out"]):
            continue
        layer = new.get_submodule(name)
        keep_in = [i for i in range(len(s.imp_in)) if i not in gone["in"]]
        keep_out = [i for i in range(len(s.imp_out)) if i not in gone["out"]]
        candidate = eigenbasis_layer(layer, s.basis, s.w_star, keep_in, keep_out)
        if not only_if_smaller or measure.count_params(candidate) <= measure.count_params(layer):
            _set_module(new, name, candidate)
            done[name] = {side: sorted(idx) for side, idx in gone.items()}
    return new, done


# ---------------------------------------------------------------------------------------------
# The pruner


def _one_round(model, data, ratio_goal, total, example_input, seed, target, floor):
    """Score ``model`` and remove directions until ``ratio_goal`` of the ``total`` original ones are gone."""
    layers, skipped = candidate_layers(model, example_input)
    start = time.perf_counter()
    with progress(data, "scoring eigendamage", unit=" batch") as counted:
        scores = score_layers(model, counted, layers, seed)
    seconds = time.perf_counter() - start
    order = direction_order(scores, *floor)
    if target != "structures":
        pruned, done = _search_cost_target(model, scores, order, ratio_goal, target, example_input)
        return pruned, done, seconds, skipped
    already = total - sum(sum(direction_counts(layer)) for layer in layers.values())
    k = round(ratio_goal * total) - already
    if k > len(order):
        raise ConfigError(f"ratio {ratio_goal} asks to remove {round(ratio_goal * total)} of {total} eigen-directions, "
                          f"but the per-layer floor (min_channels={floor[0]}, min_fraction={floor[1]}) "
                          f"allows at most {already + len(order)}")
    pruned, done = reparameterise(model, scores, order[:max(k, 0)])
    return pruned, done, seconds, skipped


def _count(model, example_input, target):
    return measure.count_params(model) if target == "params" else measure.count_macs(model, example_input)


def _search_cost_target(model, scores, order, ratio, target, example_input):
    """Fewest removed directions whose model has at most ``(1 - ratio)`` of the base ``target``
    (binary search; cost falls with every removed direction except where a layer switches form)."""
    goal = (1 - ratio) * _count(model, example_input, target)
    cache = {}

    def evaluate(k):
        if k not in cache:
            pruned, done = reparameterise(model, scores, order[:k])
            cache[k] = (pruned, done, _count(pruned, example_input, target))
        return cache[k]

    lo, hi = 0, len(order)
    if evaluate(hi)[2] > goal:
        raise ConfigError(f"ratio {ratio} of {target} cannot be reached by EigenDamage on this model")
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if evaluate(mid)[2] <= goal else (mid + 1, hi)
    return evaluate(lo)[:2]


def _one_pass(model, data, ratio, total, example_input, seed, target, steps, finetune_fn, floor):
    return _one_round(model, data, ratio, total, example_input, seed, target, floor)


def _iterative(model, data, ratio, total, example_input, seed, target, steps, finetune_fn, floor):
    if target != "structures":
        raise ConfigError(f"eigendamage mode 'iterative' removes a fraction of eigen-directions; "
                          f"target {target!r} needs mode 'one_pass'")
    check_positive_int("steps", steps)
    current, seconds, done = model, 0.0, {}
    for step in range(1, steps + 1):
        current, done, round_seconds, skipped = _one_round(current, data, ratio * step / steps, total,
                                                           example_input, seed, target, floor)
        seconds += round_seconds
        if finetune_fn is not None and step < steps:
            finetune_fn(current, data)
    return current, done, seconds, skipped


MODES = {"one_pass": _one_pass, "iterative": _iterative}


def _report(model, pruned, example_input, layers) -> dict:
    """Achieved params/MACs and, per layer, the directions kept and whether it was reparameterised."""
    per_layer = []
    for name, layer in layers.items():
        after = pruned.get_submodule(name)
        d_in, d_out = direction_counts(layer)
        k_in, k_out = direction_counts(after)
        per_layer.append({"layer": name, "directions_in": d_in, "directions_out": d_out, "kept_in": k_in,
                          "kept_out": k_out, "decomposed": isinstance(after, EigenBasisLayer),
                          "params_before": measure.count_params(layer), "params_after": measure.count_params(after)})
    total = sum(r["directions_in"] + r["directions_out"] for r in per_layer)
    kept = sum(r["kept_in"] + r["kept_out"] for r in per_layer)
    params_before, params_after = measure.count_params(model), measure.count_params(pruned)
    macs_before, macs_after = measure.count_macs(model, example_input), measure.count_macs(pruned, example_input)
    kept_fractions = [r[f"kept_{side}"] / r[f"directions_{side}"] for r in per_layer for side in ("in", "out")
                      if r[f"directions_{side}"]]
    return {"num_structures": total, "num_removed": total - kept, "achieved_fraction": (total - kept) / max(total, 1),
            "min_kept_fraction": min(kept_fractions, default=1.0),
            "params_before": params_before, "params_after": params_after,
            "macs_before": macs_before, "macs_after": macs_after,
            "params_fraction_removed": 1 - params_after / params_before,
            "macs_fraction_removed": 1 - macs_after / macs_before if macs_before else 0.0,
            "per_layer": per_layer}


@sosp_prune.register_pruner("eigendamage", cost_normalizable=False, min_fraction=AUTHORS_MIN_FRACTION)
def eigendamage(model: nn.Module, batches: Iterable, ratio: float, *, example_input: torch.Tensor,
                target: str = "structures", num_samples: int | None = None, seed: int = 0,
                min_channels: int = 1, min_fraction: float = AUTHORS_MIN_FRACTION,
                mode: str = "one_pass", steps: int = 3, finetune_fn: Callable | None = None, **unknown):
    """EigenDamage: remove the fraction ``ratio`` of all eigen-directions (or of the base model's
    params/MACs with ``target``, one-pass only) and reparameterise every layer that gets smaller.

    ``result.removed`` maps ``"<layer>:in"`` / ``"<layer>:out"`` to the removed eigen-direction indices
    (ascending eigenvalue order; last round only in iterative mode) of every reparameterised layer.
    """
    if unknown:
        raise ConfigError(f"method 'eigendamage' has no option(s) {', '.join(sorted(unknown))}; "
                          "options: mode, steps, finetune_fn (and the selection's min_channels, min_fraction)")
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if target not in sosp_prune.TARGETS:
        raise ConfigError(f"target must be one of {', '.join(sosp_prune.TARGETS)}, got {target!r}")
    ratio = sosp_prune.check_ratio(ratio)
    floor = sosp_prune.check_floor(min_channels, min_fraction)
    example_input = example_input[:1]
    data = list(limit_samples(batches, num_samples))
    layers, _ = candidate_layers(model, example_input)
    total = sum(sum(direction_counts(layer)) for layer in layers.values())
    start = time.perf_counter()
    pruned, done, seconds, skipped = MODES[mode](model, data, ratio, total, example_input, seed, target,
                                                 steps, finetune_fn, floor)
    surgery_seconds = time.perf_counter() - start - seconds
    removed = {f"{name}:{side}": idx for name, sides in done.items() for side, idx in sides.items()}
    report = _report(model, pruned, example_input, layers)
    report.update(ratio=ratio, target=target, min_channels=floor[0], min_fraction=floor[1], normalize="none",
                  mode=mode, steps=steps if mode == "iterative" else 1,
                  saliency_seconds=seconds, surgery_seconds=surgery_seconds, skipped_layers=skipped)
    return sosp_prune.PruneResult(model=pruned.eval(), removed=removed, report=report)
