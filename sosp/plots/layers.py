"""Per layer: the layer-wise pruning ratios of the bottleneck analyses, and how every method spreads its
budget over the layers."""

from __future__ import annotations

import json
from collections.abc import Iterable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..results import method_label
from .common import _colors, _empty, _original


def layer_ratios(df: pd.DataFrame, bottleneck: Iterable[dict] | None = None, **_) -> Figure:
    """Layer-wise (width key) and block-wise pruning ratios that the bottleneck analysis found (from
    ``sosp bottleneck``), one bar group per layer with one bar per pruning ratio (mean ± std over
    seeds); the layers chosen as bottlenecks are marked with a star and hatched."""
    analyses = list(bottleneck or [])
    if not analyses:
        return _empty("no bottleneck analysis (sosp bottleneck)")
    fig, axes = plt.subplots(
        len(analyses), 2, figsize=(13, 4.2 * len(analyses)), squeeze=False, gridspec_kw={"width_ratios": [3, 1]}
    )
    for row, analysis in zip(axes, analyses):
        chosen = set(analysis.get("bottlenecks") or [])
        chosen_blocks = set(analysis.get("bottleneck_blocks") or [])
        by_ratio = analysis.get("by_ratio") or {}
        for ax, level, marked in ((row[0], "layers", chosen), (row[1], "blocks", chosen_blocks)):
            ratios = sorted(by_ratio, key=float)
            keys = list(next(iter(by_ratio.values()))[level]) if by_ratio else []
            width = 0.8 / max(1, len(ratios))
            cmap = plt.get_cmap("viridis")
            for i, ratio in enumerate(ratios):
                values = [by_ratio[ratio][level].get(k, []) for k in keys]
                means = [100 * np.mean(v) if len(v) else np.nan for v in values]
                stds = [100 * np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values]
                xs = np.arange(len(keys)) + (i - (len(ratios) - 1) / 2) * width
                bars = ax.bar(
                    xs,
                    means,
                    width,
                    yerr=stds,
                    capsize=2,
                    label=f"ratio {float(ratio):g}",
                    color=cmap(0.15 + 0.7 * i / max(1, len(ratios) - 1)),
                )
                for bar, key in zip(bars, keys):
                    if key in marked:
                        bar.set_hatch("//")
                        bar.set_edgecolor("black")
            ax.set_xticks(
                range(len(keys)), [f"{k} ★" if k in marked else k for k in keys], rotation=60, ha="right", fontsize=7
            )
            ax.set_ylabel("Channels removed (%)")
            ax.set_ylim(0, 100)
            ax.grid(True, axis="y", alpha=0.3)
            what = "layer-wise (width keys)" if level == "layers" else "block-wise"
            ax.set_title(
                f"{analysis.get('dataset')} / {analysis.get('arch')}: {what}, "
                f"{analysis.get('method')} (tier {analysis.get('tier')})",
                fontsize=9,
            )
            handles = [
                Patch(facecolor=cmap(0.15 + 0.7 * i / max(1, len(ratios) - 1)), label=f"ratio {float(r):g}")
                for i, r in enumerate(ratios)
            ]
            ax.legend(handles=handles, fontsize=7, loc="upper left")
    fig.text(
        0.01,
        0.005,
        "★ / hatched: bottlenecks (lowest pruning ratios at ratio "
        + ", ".join(f"{a.get('ratio')}" for a in analyses)
        + "); mean ± std over seeds",
        fontsize=7,
        alpha=0.7,
    )
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    return fig


def method_layer_ratios(df: pd.DataFrame, **_) -> Figure:
    """Fraction of each group's channels removed (record column ``removed_per_layer``), one bar per
    method, mean over seeds, one panel per (data set, architecture, target, ratio) of the one-shot
    pruned originals: how every method spreads a global budget over the layers, and where it collapses
    a layer (a bar near 100 %)."""
    df = _original(df)
    df = df[(df["stage"] == "pruned") & df["removed_per_layer"].notna()] if "removed_per_layer" in df else df[:0]
    if not len(df):
        return _empty("no records with removed_per_layer")
    panels = list(df.groupby(["tier", "dataset", "arch", "target", "ratio"], sort=True))
    fig, axes = plt.subplots(len(panels), 1, figsize=(13, 3.6 * len(panels)), squeeze=False)
    labels = df.apply(lambda r: method_label(r.method, r.method_options), axis=1)
    colors = _colors(labels)
    for ax, ((tier, dataset, arch, target, ratio), part) in zip(axes[:, 0], panels):
        per_method = {}
        for (method, options), runs in part.groupby(["method", "method_options"], sort=True):
            frames = pd.DataFrame([json.loads(v) for v in runs["removed_per_layer"]])
            per_method[method_label(method, options)] = frames.mean()
        layers = list(dict.fromkeys(k for series in per_method.values() for k in series.index))
        width = 0.8 / max(1, len(per_method))
        for i, (label, series) in enumerate(per_method.items()):
            xs = np.arange(len(layers)) + (i - (len(per_method) - 1) / 2) * width
            ax.bar(xs, [100 * series.get(k, np.nan) for k in layers], width, color=colors[label], label=label)
        ax.set_xticks(range(len(layers)), layers, rotation=60, ha="right", fontsize=6)
        ax.set_ylabel("Channels removed (%)")
        ax.set_ylim(0, 100)
        ax.grid(True, axis="y", alpha=0.3)
        ax.set_title(f"{dataset} / {arch} (tier {tier}): ratio {ratio:g} of {target}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left", ncol=min(4, len(per_method)))
    fig.text(
        0.01,
        0.005,
        "one-shot pruned models, mean over seeds; groups are named after their first producer "
        "(EigenDamage: each layer's output eigen-directions)",
        fontsize=7,
        alpha=0.7,
    )
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    return fig
