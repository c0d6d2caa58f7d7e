"""How many calibration samples a loss-based score really rests on.

Every loss-based saliency weighs each calibration sample by how wrong the softmax is on it: the
gradient terms (SOSP's ``g``, Taylor) through the residual ``p_n - y_n``, the curvature terms (SOSP's
``G``, the Fisher of C-OBD and EigenDamage) through ``diag(p_n) - p_n p_n^T`` (docs/method.md
sections 2-5). A base model that fits its calibration samples almost perfectly gives nearly all of the
score to the few samples it gets wrong, and the best-fitted classes get no say at all.

:func:`diagnose` measures that from one extra forward pass over the calibration batches (eval mode,
no gradients, outside the timed scoring): per sample the weight ``w_n`` of each term
(``||p_n - y_n||_2`` and ``||diag(p_n) - p_n p_n^T||_F``), then

- the **effective number of samples** ``(sum_n w_n)^2 / sum_n w_n^2`` (N when all weigh the same, 1
  when one sample carries everything), and
- the **share of each class** in ``sum_n w_n`` (by true label).

It warns when the terms a method uses (:attr:`sosp.registry.Method.calibration_terms`) rest on fewer
than :data:`MIN_EFFECTIVE_SAMPLES` effective samples, or when a class carries less than
:data:`MIN_CLASS_SHARE` of its uniform share ``1 / C``. These weights are the loss side of each
score, exactly; how a sample's weight spreads over the structures (its Jacobian) is not included, so
the diagnostic is the same for every method that uses the same term.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn

from .batches import to_device
from .registry import CALIBRATION_TERMS as TERMS
from .utils import eval_mode

#: warn below this many effective calibration samples
MIN_EFFECTIVE_SAMPLES = 20.0
#: warn when a class carries less than this fraction of its uniform share 1/C of the weight
MIN_CLASS_SHARE = 0.1


def sample_weights(model: nn.Module, batches: Iterable) -> dict[str, torch.Tensor]:
    """Per calibration sample: its label and the weight of each term (:data:`TERMS`), float64, CPU;
    ``num_classes`` is the model's number of outputs."""
    labels, weights, num_classes = [], {term: [] for term in TERMS}, 0
    with eval_mode(model), torch.no_grad():
        for x, y in batches:
            x, y = to_device(model, x, y)
            p = model(x).double().softmax(-1)
            num_classes = p.shape[-1]
            residual = p.clone()
            residual[torch.arange(len(y)), y] -= 1.0
            weights["gradient"].append(residual.norm(dim=-1).cpu())
            # ||diag(p) - p p^T||_F^2 = sum p^2 - 2 sum p^3 + (sum p^2)^2
            p2, p3 = p.pow(2).sum(-1), p.pow(3).sum(-1)
            weights["curvature"].append((p2 - 2 * p3 + p2.pow(2)).clamp_min(0).sqrt().cpu())
            labels.append(y.cpu())
    out = {term: torch.cat(w) if w else torch.zeros(0, dtype=torch.float64) for term, w in weights.items()}
    out["labels"] = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    out["num_classes"] = num_classes
    return out


def effective_samples(weights: torch.Tensor) -> float:
    """``(sum w)^2 / sum w^2``: N for equal weights, 1 when one sample carries everything (0 if none)."""
    square = float(weights.pow(2).sum())
    return float(weights.sum()) ** 2 / square if square > 0 else 0.0


def class_shares(weights: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """Fraction of ``sum w`` carried by the samples of each class (true label)."""
    total = float(weights.sum())
    per_class = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, labels, weights)
    return (per_class / total).tolist() if total > 0 else [0.0] * num_classes


def diagnose(model: nn.Module, batches: Iterable, terms: Sequence[str] = TERMS) -> dict:
    """The calibration diagnostics of one scoring run: samples, effective samples and class shares of
    every term (``min_class_share_<term>``: the smallest share of a class present in the batches,
    relative to the uniform share, 1 = even), and the warnings for the ``terms`` the method's score
    uses."""
    weights = sample_weights(model, batches)
    labels, num_classes = weights["labels"], weights["num_classes"]
    report = {"samples": len(labels), "terms": list(terms), "warnings": []}
    present = sorted(set(labels.tolist()))
    for term in TERMS:
        shares = class_shares(weights[term], labels, num_classes)
        report[f"effective_samples_{term}"] = effective_samples(weights[term])
        report[f"class_shares_{term}"] = shares
        report[f"min_class_share_{term}"] = min((shares[c] * num_classes for c in present), default=None)
        if term not in terms:
            continue
        if report[f"effective_samples_{term}"] < MIN_EFFECTIVE_SAMPLES:
            report["warnings"].append(
                f"the {term} term rests on {report[f'effective_samples_{term}']:.1f} effective calibration samples "
                f"of {len(labels)} (below {MIN_EFFECTIVE_SAMPLES:g}): the base model fits them almost perfectly"
            )
        starved = [c for c in present if shares[c] * num_classes < MIN_CLASS_SHARE]
        if starved:
            report["warnings"].append(
                f"class(es) {', '.join(map(str, starved))} carry less than {MIN_CLASS_SHARE:g} of their uniform "
                f"share of the {term} term: their channels get almost no say"
            )
    return report
