"""``eigendamage``: EigenDamage (Wang, Zhang, Wang, Grosse, "EigenDamage: Structured Pruning in the
Kronecker-Factored Eigenbasis", ICML 2019), a whole pruner with its own surgery.

The K-FAC factors ``A`` and ``S`` of every layer come from :func:`sosp_baselines.fisher.kfac_factors`
(sampled labels, channel-space ``A`` for convs). ``A = Q_A diag(lambda_A) Q_A^T``,
``S = Q_S diag(lambda_S) Q_S^T``; per kernel offset ``k`` ``W*_k = Q_S^T [W_k, b] Q_A``; importance
``I_ij = sum_k (W*_kij)^2 lambda_S,i lambda_A,j`` (the Fisher quadratic form of deleting that weight
in the eigenbasis); row sums score the output eigen-directions, column sums the input ones. All
directions of all layers (every Conv2d/Linear except the classifier, as their code) form one global
pool; the fraction ``ratio`` of them with the lowest importance is removed, keeping at least
``max(min_channels, ceil(min_fraction * n))`` of the ``n`` directions per side per layer;
``min_fraction`` is at least 5 % (:data:`~sosp_baselines.fisher.AUTHORS_MIN_FRACTION`), as their code's
``prune_ratio_limit=0.95``. Each layer becomes :class:`EigenBasisLayer`:
``1x1 conv (Q_A^T, kept columns) -> core conv (W*, kept out x kept in, same kernel/stride/padding/
dilation) -> 1x1 conv (Q_S, kept columns)`` (Linear layers: three Linear layers; built in
:mod:`sosp_baselines.eigenbasis`), kept only if it has no more parameters than the layer it replaces. All
three are ordinary trainable modules (their ``fix_rotation=False`` default). A bias becomes the bias of the first 1x1 conv (the constant input
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
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from sosp import measure, selection
from sosp.batches import limit_samples
from sosp.errors import ConfigError, check_positive_int
from sosp.registry import Option, method
from sosp.structures import classifier_name
from sosp.utils import progress
from sosp_baselines.eigenbasis import (
    Eigenbasis,
    EigenBasisLayer,
    direction_counts,
    eigenbasis,
    eigenbasis_layer,
    layer_core,
)
from sosp_baselines.fisher import AUTHORS_MIN_FRACTION, kfac_factors

MODES = ("one_pass", "iterative")
OPTIONS = (
    Option(
        "mode",
        str,
        "one_pass",
        "one_pass: score once and prune; iterative: steps rounds, recomputing the factors each round",
        choices=MODES,
    ),
    Option("steps", int, 3, "rounds of the iterative mode"),
    Option(
        "finetune_fn", Callable, None, "finetune_fn(model, batches) between iterative rounds (default: no fine-tuning)"
    ),
)


# ---------------------------------------------------------------------------------------------
# Importance in the eigenbasis, candidate layers


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


def _supported(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return (
        isinstance(module, nn.Conv2d)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


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


def score_layers(
    model: nn.Module, batches: Iterable, layers: dict[str, nn.Module], seed: int = 0
) -> dict[str, LayerScores]:
    """Factors, eigenbases and direction importances of every candidate layer (in model order)."""
    factors = kfac_factors(model, batches, {name: layer_core(layer) for name, layer in layers.items()}, seed)
    scores = {}
    for name, layer in layers.items():
        if name in factors:  # a layer the forward pass never reached has no factors and stays
            basis = eigenbasis(factors[name])
            w_star, imp_out, imp_in = eigen_importance(weight_per_offset(layer_core(layer)), basis)
            scores[name] = LayerScores(basis, w_star, imp_in, imp_out)
    return scores


def direction_order(
    scores: dict[str, LayerScores], min_channels: int = 1, min_fraction: float = AUTHORS_MIN_FRACTION
) -> list[tuple[str, str, int]]:
    """Every removable ``(layer, side, direction)``, lowest importance first (ties by position),
    never taking a side of a layer below its floor (:func:`sosp.selection.group_floor`): the shared
    :func:`sosp.selection.lowest_first` over every layer side."""
    sides = [(name, side, imp) for name, s in scores.items() for side, imp in (("in", s.imp_in), ("out", s.imp_out))]
    floors = [selection.group_floor(len(imp), min_channels, min_fraction) for _, _, imp in sides]
    order = selection.lowest_first([imp for _, _, imp in sides], floors)
    return [(sides[i][0], sides[i][1], direction) for i, direction in order]


def reparameterise(
    model: nn.Module,
    scores: dict[str, LayerScores],
    removal: Sequence[tuple[str, str, int]],
    only_if_smaller: bool = True,
) -> tuple[nn.Module, dict[str, dict[str, list[int]]]]:
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
        pruned, done = _cost_target(model, scores, order, ratio_goal, target, example_input)
        return pruned, done, seconds, skipped
    already = total - sum(sum(direction_counts(layer)) for layer in layers.values())
    k = round(ratio_goal * total) - already
    if k > len(order):
        raise ConfigError(
            f"ratio {ratio_goal} asks to remove {round(ratio_goal * total)} of {total} eigen-directions, "
            f"but the per-layer floor (min_channels={floor[0]}, min_fraction={floor[1]}) "
            f"allows at most {already + len(order)}"
        )
    pruned, done = reparameterise(model, scores, order[: max(k, 0)])
    return pruned, done, seconds, skipped


def _cost_target(model, scores, order, ratio, target, example_input):
    """Fewest removed directions whose model has at most ``(1 - ratio)`` of the base ``target``
    (:func:`sosp.selection.fewest_for_cost`; cost falls with every removed direction except where a
    layer switches form)."""

    def build(k):
        pruned, done = reparameterise(model, scores, order[:k])
        return pruned, (pruned, done)

    return selection.fewest_for_cost(model, example_input, ratio, target, len(order), build)[1]


def _report(model, pruned, example_input, layers) -> dict:
    """Achieved params/MACs and, per layer, the directions kept and whether it was reparameterised."""
    per_layer = []
    for name, layer in layers.items():
        after = pruned.get_submodule(name)
        d_in, d_out = direction_counts(layer)
        k_in, k_out = direction_counts(after)
        per_layer.append(
            {
                "layer": name,
                "directions_in": d_in,
                "directions_out": d_out,
                "kept_in": k_in,
                "kept_out": k_out,
                "decomposed": isinstance(after, EigenBasisLayer),
                "params_before": measure.count_params(layer),
                "params_after": measure.count_params(after),
            }
        )
    total = sum(r["directions_in"] + r["directions_out"] for r in per_layer)
    kept = sum(r["kept_in"] + r["kept_out"] for r in per_layer)
    kept_fractions = [
        r[f"kept_{side}"] / r[f"directions_{side}"]
        for r in per_layer
        for side in ("in", "out")
        if r[f"directions_{side}"]
    ]
    return {
        "num_structures": total,
        "num_removed": total - kept,
        "achieved_fraction": (total - kept) / max(total, 1),
        "min_kept_fraction": min(kept_fractions, default=1.0),
        **selection.cost_fields(model, pruned, example_input),
        "per_layer": per_layer,
    }


@method(
    "eigendamage",
    "pruner",
    options=OPTIONS,
    cost_normalizable=False,
    min_fraction=AUTHORS_MIN_FRACTION,
    calibration_terms=("curvature",),  # the K-FAC Fisher
)
def eigendamage(
    request: selection.PruneRequest,
    *,
    mode: str,
    steps: int,
    finetune_fn: Callable | None,
) -> selection.PruneResult:
    """EigenDamage: remove the fraction ``ratio`` of all eigen-directions (or of the base model's
    params/MACs with ``target``, one-pass only) and reparameterise every layer that gets smaller.

    ``result.removed`` maps ``"<layer>:in"`` / ``"<layer>:out"`` to the removed eigen-direction indices
    (ascending eigenvalue order; last round only in iterative mode) of every reparameterised layer.
    """
    model, example_input, target, seed = request.model, request.example_input[:1], request.target, request.seed
    if target not in selection.TARGETS:
        raise ConfigError(f"target must be one of {', '.join(selection.TARGETS)}, got {target!r}")
    rounds = 1
    if mode == "iterative":
        if target != "structures":
            raise ConfigError(
                f"eigendamage mode 'iterative' removes a fraction of eigen-directions; "
                f"target {target!r} needs mode 'one_pass'"
            )
        rounds = check_positive_int("steps", steps)
    ratio = selection.check_ratio(request.ratio)
    floor = selection.check_floor(request.min_channels, request.min_fraction)
    data = list(limit_samples(request.batches, request.num_samples))
    layers, _ = candidate_layers(model, example_input)
    total = sum(sum(direction_counts(layer)) for layer in layers.values())
    start = time.perf_counter()
    pruned, done, seconds = model, {}, 0.0
    for step in range(1, rounds + 1):  # each round recomputes the factors of the current network
        pruned, done, round_seconds, skipped = _one_round(
            pruned, data, ratio * step / rounds, total, example_input, seed, target, floor
        )
        seconds += round_seconds
        if finetune_fn is not None and step < rounds:
            finetune_fn(pruned, data)
    surgery_seconds = time.perf_counter() - start - seconds
    removed = {f"{name}:{side}": idx for name, sides in done.items() for side, idx in sides.items()}
    report = _report(model, pruned, example_input, layers)
    report.update(
        ratio=ratio,
        target=target,
        min_channels=floor[0],
        min_fraction=floor[1],
        normalize="none",
        mode=mode,
        steps=rounds,
        saliency_seconds=seconds,
        surgery_seconds=surgery_seconds,
        skipped_layers=skipped,
    )
    return selection.PruneResult(model=pruned.eval(), removed=removed, report=report)
