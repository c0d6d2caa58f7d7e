"""Figures, each a function of the tidy records DataFrame (``sosp.results.collect``) alone, plus, for the
layer-wise pruning ratios, the bottleneck analyses that ``sosp bottleneck`` writes beside the records.

Add a figure by writing ``def my_figure(df, **context) -> Figure`` and registering it in :data:`FIGURES`;
the ``sosp report`` command and the workflow's figure rules write every listed figure as PNG and PDF.
``context`` holds ``bottleneck`` (a list of analysis mappings, possibly empty). Every axis names its
quantity and unit.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from .io import atomic_path  # noqa: E402
from .results import ORIGINAL, UNPRUNED, method_label, tidy  # noqa: E402

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


def _scale(values: np.ndarray) -> tuple[float, str]:
    top = np.nanmax(np.abs(values)) if len(values) and np.isfinite(values).any() else 1.0
    for factor, prefix in ((1e9, "$10^9$"), (1e6, "$10^6$"), (1e3, "$10^3$")):
        if top >= factor:
            return factor, prefix
    return 1.0, ""


def _empty(message: str) -> Figure:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return fig


def _original(df: pd.DataFrame) -> pd.DataFrame:
    """The records of networks at their registry widths (the bottleneck study's widened variants have
    figures of their own)."""
    df = tidy(df) if len(df) else df
    return df[df["variant"] == ORIGINAL] if len(df) else df


def _grid(n: int, width: float = 5.2, height: float = 4.0, ncols: int = 3):
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in list(axes.flat)[n:]:
        ax.set_axis_off()
    return fig, list(axes.flat)


def _legend(fig: Figure, axes, loc: str = "lower right", fontsize: int = 8, most: int = 8) -> None:
    """A legend in each panel while it is short; else one legend for the figure, below the panels."""
    entries: dict = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if len(entries) <= most:
        for ax in axes:
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=fontsize, loc=loc)
        return
    fig.legend(
        list(entries.values()),
        list(entries),
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=min(4, len(entries)),
        fontsize=fontsize,
        frameon=False,
    )


def _colors(names: Iterable[str]) -> dict:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {name: cycle[i % len(cycle)] for i, name in enumerate(sorted(set(names)))}


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


def scoring_time(df: pd.DataFrame, **_) -> Figure:
    """Wall-clock seconds of computing the saliencies (scoring only, one job per model and method), per
    method: bars are means over seeds with std error bars, one panel per (data set, architecture),
    log scale; methods without a scoring step (their own surgery) show their whole pruning time."""
    df = _original(df)
    df = df[df["stage"] == "pruned"] if len(df) else df
    if not len(df) or (df["saliency_seconds"].isna() & df["prune_seconds"].isna()).all():
        return _empty("no pruning records with timings")
    panels = list(df.groupby(["tier", "dataset", "arch"], sort=True))
    fig, axes = _grid(len(panels), width=5.6)
    for ax, ((tier, dataset, arch), part) in zip(axes, panels):
        part = part.assign(
            seconds=part["saliency_seconds"].fillna(part["prune_seconds"]),
            label=[method_label(m, o) for m, o in zip(part["method"], part["method_options"])],
        )
        per_seed = part.groupby(["label", "seed"])["seconds"].mean().reset_index()
        agg = per_seed.groupby("label")["seconds"].agg(["mean", "std"]).sort_values("mean")
        colors = [_colors(agg.index)[name] for name in agg.index]
        ax.bar(range(len(agg)), agg["mean"], yerr=agg["std"].fillna(0), color=colors, capsize=3)
        ax.set_xticks(range(len(agg)), agg.index, rotation=30, ha="right", fontsize=8)
        if (agg["mean"] > 0).all():
            ax.set_yscale("log")
        samples = part["samples"].dropna()
        extra = f", {int(samples.max())} calibration samples" if len(samples) else ""
        ax.set_title(f"{dataset} / {arch} (tier {tier}{extra})", fontsize=10)
        ax.set_ylabel("Scoring time (s, wall clock)")
        ax.grid(True, axis="y", alpha=0.3)
    device = df["device_name"].dropna()
    fig.text(
        0.01,
        0.005,
        "mean ± std over seeds"
        + (f"; measured on {device.iloc[0]}" if len(device) else "")
        + "; eigendamage / iterative methods: whole pruning time",
        fontsize=7,
        alpha=0.7,
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def _latency_columns(df: pd.DataFrame) -> list[str]:
    from .results.records import _LATENCY

    return [c for c in df.columns if _LATENCY.match(c) and "_iqr_" not in c and df[c].notna().any()]


def latency_macs(df: pd.DataFrame, **_) -> Figure:
    """Measured latency (median ms per batch) against MACs per image, one panel per (data set,
    architecture) and latency column (device and batch size); fine-tuned models per method (means over
    seeds, IQR of the timing as error bars) and the unpruned base model (black star)."""
    df = _original(df)
    columns = _latency_columns(df) if len(df) else []
    if not columns:
        return _empty("no latency measurements")
    pruned_stage = "finetuned" if df.loc[df["stage"] == "finetuned", columns].notna().any().any() else "pruned"
    df = df[df["stage"].isin((pruned_stage, "base"))]
    groups = list(df.groupby(["tier", "dataset", "arch"], sort=True))
    panels = [(key, part, col) for key, part in groups for col in columns if part[col].notna().any()]
    if not panels:
        return _empty("no latency measurements")
    fig, axes = _grid(len(panels), ncols=min(len(columns), 4) if len(columns) > 1 else 3)
    colors = _colors(method_label(m, o) for m, o in zip(df["method"], df["method_options"]) if m != "none")
    factor, prefix = _scale(df["macs"].to_numpy(dtype=float))
    for ax, ((tier, dataset, arch), part, col) in zip(axes, panels):
        iqr = col.replace("_ms", "_iqr_ms")
        for (method, options), runs in part[part["stage"] == pruned_stage].groupby(["method", "method_options"]):
            label = method_label(method, options)
            if iqr not in runs:
                runs = runs.assign(**{iqr: np.nan})
            agg = runs.groupby("ratio").agg(x=("macs", "mean"), y=(col, "mean"), e=(iqr, "mean")).sort_values("x")
            ax.errorbar(
                agg["x"].astype(float) / factor,
                agg["y"],
                yerr=agg["e"].fillna(0),
                marker="o",
                capsize=3,
                color=colors[label],
                label=label,
            )
        base = part[part["stage"] == "base"]
        if len(base):
            ax.errorbar(
                [base["macs"].astype(float).mean() / factor],
                [base[col].mean()],
                yerr=[np.nan_to_num(base[iqr].mean() if iqr in base else np.nan)],
                color="black",
                marker="*",
                markersize=12,
                linestyle="none",
                label="base (unpruned)",
            )
        _, device, batch, _ = col.split("_")
        ax.set_title(f"{dataset} / {arch}: {device.upper()}, batch {batch[1:]} (tier {tier})", fontsize=9)
        ax.set_xlabel(f"MACs per image ({prefix + ' ' if prefix else ''}multiply-accumulates, batch 1)")
        ax.set_ylabel(f"Latency per batch of {batch[1:]} (ms, median)")
        ax.grid(True, alpha=0.3)
    _legend(fig, axes[: len(panels)], "upper left", 7)
    names = df["device_name"].dropna().unique()
    threads = df["threads"].dropna().unique()
    fig.text(
        0.01,
        0.005,
        f"{'fine-tuned' if pruned_stage == 'finetuned' else 'one-shot pruned'} models, mean over "
        "seeds; error bars: inter-quartile range of the timing"
        + (f"; {', '.join(map(str, names))}" if len(names) else "")
        + (f"; {', '.join(map(str, threads))} thread(s)" if len(threads) else ""),
        fontsize=7,
        alpha=0.7,
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


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
                        for c in ("method", "method_options")
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
        label = method_label(*method) if method else "no pruned networks"
        ax.set_title(f"{dataset} / {arch}, pruned by {label} (tier {tier})", fontsize=10)
        ax.set_xlabel(f"Parameters ({prefix + ' ' if prefix else ''}count)")
        ax.set_ylabel("Top-1 test accuracy (%; pruned: after fine-tuning)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.text(0.01, 0.005, "stars: unpruned networks; mean ± std over seeds in both directions", fontsize=7, alpha=0.7)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    return fig


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


#: figure name (file stem) -> function of the records DataFrame (and ``bottleneck`` analyses)
FIGURES: dict[str, Callable[..., Figure]] = {
    "tradeoff_macs": tradeoff_macs,
    "tradeoff_params": tradeoff_params,
    "oneshot_ratio": oneshot_ratio,
    "latency_macs": latency_macs,
    "scoring_time": scoring_time,
    "layer_ratios": layer_ratios,
    "method_layer_ratios": method_layer_ratios,
    "bottleneck_params": bottleneck_params,
}
FORMATS = ("png", "pdf")


def save(fig: Figure, stem: str | os.PathLike, formats: Iterable[str] = FORMATS, dpi: int = 150) -> list[Path]:
    """Write ``fig`` to ``stem.<format>`` for each format, atomically; close it; return the paths."""
    paths = []
    for fmt in formats:
        path = Path(f"{stem}.{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(
                tmp, format=fmt, dpi=dpi, bbox_inches="tight", metadata={"CreationDate": None} if fmt == "pdf" else None
            )
        paths.append(path)
    plt.close(fig)
    return paths


def write_figures(
    df: pd.DataFrame,
    out_dir: str | os.PathLike,
    names: Iterable[str] | None = None,
    formats: Iterable[str] = FORMATS,
    bottleneck: Iterable[dict] | None = None,
) -> list[Path]:
    """Every figure in ``names`` (default: all of :data:`FIGURES`) as ``out_dir/<name>.<format>``;
    ``bottleneck``: the analyses of ``sosp bottleneck`` (for ``layer_ratios``)."""
    from .errors import UnknownNameError

    names = list(names or FIGURES)
    for name in names:  # all names checked before the first file is written
        if name not in FIGURES:
            raise UnknownNameError("figure", name, FIGURES)
    bottleneck = list(bottleneck or [])
    paths = []
    for name in names:
        paths += save(FIGURES[name](df, bottleneck=bottleneck), Path(out_dir) / name, formats)
    return paths
