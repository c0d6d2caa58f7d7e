"""Time: the scoring time of every method, and measured latency against MACs."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..results import method_label
from .common import _colors, _empty, _grid, _legend, _original, _scale


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
    from ..results.records import _LATENCY

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
