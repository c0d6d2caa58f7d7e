"""The one-shot curves: test top-1 before any fine-tuning against the pruning ratio, per target and
method, from the table of :func:`sosp.results.oneshot.oneshot_table` (not a records figure: the rows
come from ``sosp prune --oneshot-ratio``, not from the records, so it is not in ``FIGURES``)."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from ..results import method_label
from .common import _colors, _empty, _grid, _legend

_TARGET_TEXT = {"structures": "structures", "macs": "MACs", "params": "parameters"}


def oneshot_curves(table: pd.DataFrame) -> Figure:
    """One panel per (data set, net, target): one line per method, the one-shot test top-1 (%) against
    the ratio removed, mean over seeds with standard-deviation error bars; solid with the BN statistics
    as pruning left them, dashed with them re-estimated on training images (when the rows have it)."""
    if not len(table) or table["oneshot_top1_pct_mean"].isna().all():
        return _empty("no one-shot rows")
    panels = list(table.groupby(["dataset", "net", "target"], sort=False))
    fig, axes = _grid(len(panels))
    colors = _colors(method_label(m, o) for m, o in zip(table["method"], table["method_options"]))
    for ax, ((dataset, net, target), part) in zip(axes, panels):
        for (method, options), rows in part.groupby(["method", "method_options"], sort=False):
            label = method_label(method, options)
            rows = rows.sort_values("ratio")
            for prefix, style, suffix in (("oneshot", "-", ""), ("reestimated", "--", " (BN re-estimated)")):
                mean = rows[f"{prefix}_top1_pct_mean"].astype(float)
                if mean.isna().all():
                    continue
                ax.errorbar(
                    rows["ratio"].astype(float),
                    mean,
                    yerr=rows[f"{prefix}_top1_pct_std"].astype(float).fillna(0.0),
                    color=colors[label],
                    linestyle=style,
                    marker="o" if style == "-" else "x",
                    markersize=4,
                    capsize=2,
                    label=label + suffix,
                )
        ax.set_title(f"{dataset} / {net}", fontsize=10)
        ax.set_xlabel(f"ratio of {_TARGET_TEXT.get(target, target)} removed (fraction)")
        ax.set_ylabel("one-shot test top-1 (%)")
        ax.grid(alpha=0.3)
    _legend(fig, axes, loc="lower left")
    fig.suptitle("One-shot accuracy (no fine-tuning) against the pruning ratio", fontsize=11)
    fig.tight_layout()
    return fig
