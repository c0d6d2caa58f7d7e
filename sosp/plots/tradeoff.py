"""Accuracy against cost: the trade-off curves of every method (after fine-tuning and one-shot) and the
one-shot accuracy against the pruning ratio."""

from __future__ import annotations

from collections.abc import Iterable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..results import method_label
from .common import _colors, _empty, _grid, _legend, _original, _scale

#: quantity -> (axis label stem, unit word) for the x axis of trade-off plots
_X_AXES = {
    "macs": ("MACs per image", "multiply-accumulates, batch 1"),
    "flops": ("FLOPs per image", "floating-point operations, batch 1"),
    "params": ("Parameters", "count"),
}
_STAGE_STYLE = {
    "finetuned": dict(linestyle="-", marker="o", alpha=1.0, suffix=" (fine-tuned)"),
    "pruned": dict(linestyle="--", marker="x", alpha=0.6, suffix=" (one-shot)"),
}


def tradeoff(df: pd.DataFrame, x: str = "macs", stages: Iterable[str] = ("finetuned", "pruned"), **_) -> Figure:
    """Top-1 test accuracy (%) against cost ``x`` (``macs``, ``flops`` or ``params``), one line per
    pruning method and stage, one panel per (data set, architecture); points are means over seeds with
    standard-deviation error bars in both directions (one point per target and ratio, so the methods
    are compared at equal cost, whatever the ratio counted); the unpruned base model is a black star."""
    if x not in _X_AXES:
        raise ValueError(f"x must be one of {', '.join(_X_AXES)}, not {x!r}")
    df = _original(df)
    if not len(df) or df[x].isna().all() or df["top1"].isna().all():
        return _empty(f"no records with top-1 and {x}")
    df = df.astype({x: float, "top1": float}).dropna(subset=[x, "top1"])
    panels = list(df.groupby(["tier", "dataset", "arch"], sort=True))
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.0 * nrows), squeeze=False)
    factor, prefix = _scale(df[x].to_numpy(dtype=float))
    stem, unit = _X_AXES[x]
    unit_text = f"{prefix} {unit}" if prefix else unit
    stages = tuple(stages)
    for ax, ((tier, dataset, arch), part) in zip(axes.flat, panels):
        colors = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4)
        pruned = part[part["stage"].isin(stages)]
        for (method, options), runs in pruned.groupby(["method", "method_options"], sort=True):
            color = next(colors)
            for stage in stages:
                rows = runs[runs["stage"] == stage]
                if not len(rows):
                    continue
                # every (target, ratio) is one point: runs at equal structure ratio and at equal MACs
                # lie on the same accuracy-against-cost curve, which is itself an equal-cost comparison
                agg = (
                    rows.groupby(["target", "ratio"])
                    .agg(
                        x=(x, "mean"),
                        x_std=(x, "std"),
                        y=("top1", "mean"),
                        y_std=("top1", "std"),
                        n=("seed", "nunique"),
                    )
                    .sort_values("x")
                )
                style = _STAGE_STYLE.get(stage, dict(linestyle=":", marker="s", alpha=0.8, suffix=f" ({stage})"))
                ax.errorbar(
                    agg["x"] / factor,
                    100 * agg["y"],
                    xerr=agg["x_std"].fillna(0) / factor,
                    yerr=100 * agg["y_std"].fillna(0),
                    color=color,
                    linestyle=style["linestyle"],
                    marker=style["marker"],
                    alpha=style["alpha"],
                    capsize=3,
                    label=method_label(method, options) + style["suffix"],
                )
        base = part[part["stage"] == "base"]
        if len(base):
            bx, by = base[x].mean() / factor, 100 * base["top1"].mean()
            ax.errorbar(
                [bx],
                [by],
                xerr=[np.nan_to_num(base[x].std() / factor)],
                yerr=[np.nan_to_num(100 * base["top1"].std())],
                color="black",
                marker="*",
                markersize=13,
                linestyle="none",
                capsize=3,
                label="base (unpruned)",
                zorder=5,
            )
            ax.axhline(by, color="black", linewidth=0.6, linestyle=":")
        seeds = part["seed"].nunique()
        ax.set_title(f"{dataset} / {arch} (tier {tier}, {seeds} seed{'s' if seeds != 1 else ''})", fontsize=10)
        ax.set_xlabel(f"{stem} ({unit_text})")
        ax.set_ylabel("Top-1 test accuracy (%)")
        ax.grid(True, alpha=0.3)
    _legend(fig, list(axes.flat)[: len(panels)], "lower right")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_axis_off()
    fig.text(
        0.01,
        0.005,
        "compared at equal cost (x axis); one point per target and ratio; mean ± std over seeds; "
        "error bars in both directions",
        fontsize=7,
        alpha=0.7,
    )
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    return fig


def tradeoff_macs(df: pd.DataFrame, **_) -> Figure:
    return tradeoff(df, x="macs")


def tradeoff_params(df: pd.DataFrame, **_) -> Figure:
    return tradeoff(df, x="params")


def oneshot_ratio(df: pd.DataFrame, **_) -> Figure:
    """One-shot top-1 (%), right after pruning and before any fine-tuning, against the requested pruning
    ratio; one line per method (mean ± std over seeds), one panel per (data set, architecture); the
    dotted line is the unpruned model."""
    df = _original(df)
    if not len(df) or not (df["stage"] == "pruned").any():
        return _empty("no one-shot (pruned) records")
    pruned = df[df["stage"] == "pruned"]
    panels = [
        (key + (target,), pd.concat([part[part["stage"] == "base"], part[part["target"] == target]]))
        for key, part in df.groupby(["tier", "dataset", "arch"], sort=True)
        for target in sorted(
            pruned.loc[
                (pruned["tier"] == key[0]) & (pruned["dataset"] == key[1]) & (pruned["arch"] == key[2]), "target"
            ].unique()
        )
    ]
    fig, axes = _grid(len(panels))
    colors = _colors(pruned.apply(lambda r: method_label(r.method, r.method_options), axis=1))
    for ax, ((tier, dataset, arch, target), part) in zip(axes, panels):
        for (method, options), runs in part[part["stage"] == "pruned"].groupby(["method", "method_options"]):
            label = method_label(method, options)
            agg = runs.groupby("ratio")["top1"].agg(["mean", "std"]).sort_index()
            ax.errorbar(
                agg.index,
                100 * agg["mean"],
                yerr=100 * agg["std"].fillna(0),
                marker="o",
                capsize=3,
                color=colors[label],
                label=label,
            )
        base = part[part["stage"] == "base"]["top1"].astype(float)
        if len(base):
            ax.axhline(100 * base.mean(), color="black", linestyle=":", linewidth=1, label="base (unpruned)")
        ax.set_title(f"{dataset} / {arch} (tier {tier}), equal {target}", fontsize=10)
        ax.set_xlabel(f"Pruning ratio (fraction of the {target} removed)")
        ax.set_ylabel("One-shot top-1 test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(True, alpha=0.3)
    _legend(fig, axes[: len(panels)], "lower left", 7)
    fig.text(0.01, 0.005, "before fine-tuning; mean ± std over seeds", fontsize=7, alpha=0.7)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    return fig
