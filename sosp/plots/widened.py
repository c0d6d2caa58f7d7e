"""The bottleneck study: accuracy against parameters of the original, bottleneck-widened and uniformly
widened networks."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from ..results import ORIGINAL, UNPRUNED, method_label, tidy
from .common import _empty, _grid, _scale


def bottleneck_params(df: pd.DataFrame, **_) -> Figure:
    """The bottleneck study: top-1 (%) after fine-tuning against parameters for the original network,
    the bottleneck-widened one and the uniformly widened one, each pruned at several ratios by the same
    method (unpruned networks as large markers); mean ± std over seeds in both directions; one panel
    per (data set, architecture, method)."""
    df = tidy(df) if len(df) else df
    if not len(df) or not (df["variant"] != ORIGINAL).any():
        return _empty("no widened networks (bottleneck study not run)")
    widened = df[df["variant"] != ORIGINAL]
    keys = sorted({(t, d, a) for t, d, a in zip(widened["tier"], widened["dataset"], widened["arch"])})
    panels = []
    for tier, dataset, arch in keys:
        part = df[(df["tier"] == tier) & (df["dataset"] == dataset) & (df["arch"] == arch)]
        methods = sorted(
            set(
                zip(
                    *[
                        part.loc[(part["variant"] != ORIGINAL) & (part["stage"] == "finetuned"), c]
                        for c in ("method", "method_options", "target")
                    ]
                )
            )
        )
        panels += [((tier, dataset, arch), part, m) for m in methods] or [((tier, dataset, arch), part, None)]
    fig, axes = _grid(len(panels))
    variants = [ORIGINAL] + sorted(v for v in df["variant"].unique() if v != ORIGINAL)
    colors = dict(zip(variants, ["black"] + plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    factor, prefix = _scale(df["params"].to_numpy(dtype=float))
    for ax, ((tier, dataset, arch), part, method) in zip(axes, panels):
        for variant in variants:
            runs = part[part["variant"] == variant]
            if method is not None:
                pruned = runs[
                    (runs["stage"] == "finetuned")
                    & (runs["method"] == method[0])
                    & (runs["method_options"] == method[1])
                    & (runs["target"] == method[2])  # the widened nets' target only: the originals may have several
                ]
            else:
                pruned = runs.iloc[0:0]
            unpruned = runs[runs["stage"].isin(UNPRUNED)]
            if not len(pruned) and not len(unpruned):
                continue
            agg = (
                pd.concat([unpruned.assign(ratio=0.0), pruned])
                .astype({"params": float, "top1": float})
                .groupby("ratio")
                .agg(x=("params", "mean"), xs=("params", "std"), y=("top1", "mean"), ys=("top1", "std"))
                .sort_values("x")
            )
            ax.errorbar(
                agg["x"] / factor,
                100 * agg["y"],
                xerr=agg["xs"].fillna(0) / factor,
                yerr=100 * agg["ys"].fillna(0),
                marker="o",
                capsize=3,
                color=colors[variant],
                label=variant,
            )
            if len(unpruned):
                ax.plot(
                    [unpruned["params"].astype(float).mean() / factor],
                    [100 * unpruned["top1"].astype(float).mean()],
                    marker="*",
                    markersize=13,
                    color=colors[variant],
                    linestyle="none",
                )
        label = f"pruned by {method_label(*method[:2])} ({method[2]})" if method else "no pruned networks"
        ax.set_title(f"{dataset} / {arch}, {label}\n(tier {tier})", fontsize=10)
        ax.set_xlabel(f"Parameters ({prefix + ' ' if prefix else ''}count)")
        ax.set_ylabel("Top-1 test accuracy (%; pruned: after fine-tuning)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.text(0.01, 0.005, "stars: unpruned networks; mean ± std over seeds in both directions", fontsize=7, alpha=0.7)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    return fig
