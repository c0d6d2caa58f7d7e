"""One-shot evaluation of pruned models (no fine-tuning): test top-1 and loss with the BatchNorm
statistics as pruning left them (``as_is``) and, optionally, re-estimated on training images
(``reestimated``), one row per pruned model. Without fine-tuning noise this is where the saliencies
themselves are compared (the low-ratio one-shot curves).

BN re-estimation (:func:`reestimate_bn`): a copy of the model with every BatchNorm layer's running
statistics reset and re-estimated as a cumulative average over the first ``images`` training images
(no augmentation, shuffled with the run's seed, batches of 256), the model in train mode without
gradients; nothing else changes. The unpruned model's statistics no longer fit a pruned model whose
inputs to a layer changed, so this separates what the removed channels carried from what stale
statistics cost.

Used by ``sosp prune --oneshot-ratio`` (the workflow's ``prune.oneshot_ratios``: rows written to
``results/<tier>/oneshot/<net>/s<seed>/<method>.csv``, gathered by :mod:`sosp.results.oneshot`) and by
``benchmarks/oneshot_curves.py``.
"""

from __future__ import annotations

import copy
import csv
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from .data import DataBundle, Split

# torch, the data and training modules are imported where they are used: the command line imports
# this module's constants when it builds its parser, before any verb runs

#: BatchNorm statistics a one-shot model is evaluated with
BN_MODES = ("as_is", "reestimated")
#: training images for the BN re-estimation unless told otherwise (``prune.oneshot_bn_images``)
DEFAULT_BN_IMAGES = 2048
#: columns of a one-shot row, in order (percentages and losses of the evaluation split; the
#: ``reestimated_*`` ones empty unless asked, ``bn_images`` then 0)
COLUMNS = (
    "tier",
    "dataset",
    "net",
    "seed",
    "method",
    "method_options",
    "target",
    "ratio",
    "achieved_fraction",
    "params_removed_pct",
    "macs_removed_pct",
    "min_kept_pct",
    "samples",
    "split",
    "base_top1_pct",
    "base_loss",
    "oneshot_top1_pct",
    "oneshot_loss",
    "reestimated_top1_pct",
    "reestimated_loss",
    "bn_images",
)


def check_modes(modes: Sequence[str]) -> tuple[str, ...]:
    modes = tuple(modes)
    bad = [m for m in modes if m not in BN_MODES]
    if bad or not modes:
        raise ConfigError(f"BN modes must be some of {', '.join(BN_MODES)}, got {', '.join(modes) or 'none'}")
    return modes


def reestimate_bn(model: nn.Module, split: Split, images: int, seed: int, device="cpu") -> nn.Module:
    """A copy of ``model`` in eval mode whose BatchNorm running statistics are re-estimated (cumulative
    average) on the first ``images`` images of ``split`` (shuffled by ``seed``, no augmentation)."""
    import torch

    from .data import batches
    from .utils import train_mode

    if images < 1:
        raise ConfigError(f"BN re-estimation needs at least one image, got {images}")
    model = copy.deepcopy(model)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    seen = 0
    with train_mode(model), torch.no_grad():
        for x, _ in batches(split, 256, shuffle=True, generator=torch.Generator().manual_seed(seed), device=device):
            model(x[: images - seen])
            seen += min(len(x), images - seen)
            if seen >= images:
                break
    return model.eval()


def evaluate(
    model: nn.Module,
    bundle: DataBundle,
    *,
    modes: Sequence[str] = ("as_is",),
    bn_images: int = DEFAULT_BN_IMAGES,
    seed: int = 0,
    split: str = "test",
    batch_size: int = 512,
    device="cpu",
) -> dict:
    """One-shot metrics of ``model`` on ``split`` of ``bundle``: ``oneshot_top1_pct``/``oneshot_loss``
    with the BN statistics as they are (``as_is`` in ``modes``) and ``reestimated_top1_pct``/
    ``reestimated_loss`` after :func:`reestimate_bn` on ``bn_images`` training images (``reestimated``);
    ``bn_images`` the images actually used (0 without re-estimation). Metrics not asked are None."""
    from .train import evaluate as metrics_of

    modes = check_modes(modes)
    where = {"train": bundle.train, "val": bundle.val, "test": bundle.test}[split]
    out: dict = {"oneshot_top1_pct": None, "oneshot_loss": None, "reestimated_top1_pct": None}
    out.update(reestimated_loss=None, bn_images=0)
    if "as_is" in modes:
        m = metrics_of(model, where, batch_size=batch_size, device=device)
        out.update(oneshot_top1_pct=100 * m["top1"], oneshot_loss=m["loss"])
    if "reestimated" in modes:
        images = min(bn_images, len(bundle.train))
        fresh = reestimate_bn(model, bundle.train, images, seed, device=device)
        m = metrics_of(fresh, where, batch_size=batch_size, device=device)
        out.update(reestimated_top1_pct=100 * m["top1"], reestimated_loss=m["loss"], bn_images=images)
    return out


def cost_fields(report: Mapping) -> dict:
    """What a pruning removed (a ``PruneResult.report``), in the units of a one-shot row."""
    return {
        "achieved_fraction": report["achieved_fraction"],
        "params_removed_pct": 100 * (1 - report["params_after"] / report["params_before"]),
        "macs_removed_pct": 100 * (1 - report["macs_after"] / report["macs_before"]) if report["macs_before"] else 0.0,
        "min_kept_pct": 100 * report["min_kept_fraction"],
    }


def row(report: Mapping, metrics: Mapping, **identity) -> dict:
    """One one-shot row: ``identity`` (net, seed, method, target, ratio, ...), :func:`cost_fields` of the
    prune ``report`` and the :func:`evaluate` ``metrics``; the :data:`COLUMNS` first, in order."""
    fields = {**identity, **cost_fields(report), **metrics}
    return {**{c: fields.get(c) for c in COLUMNS}, **{k: v for k, v in fields.items() if k not in COLUMNS}}


def write_rows(path: str | os.PathLike, rows: Iterable[Mapping]) -> None:
    """One-shot rows as a CSV file (written atomically; :data:`COLUMNS` first, empty cells for None)."""
    from .io import write_atomic

    rows = list(rows)
    columns = list(COLUMNS) + [k for r in rows for k in r if k not in COLUMNS]
    columns = list(dict.fromkeys(columns))

    def _write(tmp) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: "" if r.get(k) is None else r.get(k) for k in columns})

    write_atomic(path, _write)
