"""Figures, each a function of the tidy records DataFrame alone (``sosp.results.collect``).

Add a figure by writing ``def my_figure(df) -> Figure`` and registering it in :data:`FIGURES`; the
``sosp report`` command and the ``report`` workflow rule write every registered figure as PNG and PDF.
Every axis names its quantity and unit.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .io import atomic_path  # noqa: E402
from .results import method_label, tidy  # noqa: E402

#: quantity -> (axis label stem, unit word) for the x axis of trade-off plots
_X_AXES = {
    "macs": ("MACs per image", "multiply-accumulates, batch 1"),
    "flops": ("FLOPs per image", "floating-point operations, batch 1"),
    "params": ("Parameters", "count"),
}
_STAGE_STYLE = {"finetuned": dict(linestyle="-", marker="o", alpha=1.0, suffix=" (fine-tuned)"),
                "pruned": dict(linestyle="--", marker="x", alpha=0.6, suffix=" (one-shot)")}


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


def tradeoff(df: pd.DataFrame, x: str = "macs", stages: Iterable[str] = ("finetuned", "pruned")) -> Figure:
    """Top-1 test accuracy (%) against cost ``x`` (``macs``, ``flops`` or ``params``), one line per
    pruning method and stage, one panel per (data set, architecture); points are means over seeds with
    standard-deviation error bars in both directions; the unpruned base model is a black star."""
    if x not in _X_AXES:
        raise ValueError(f"x must be one of {', '.join(_X_AXES)}, not {x!r}")
    df = tidy(df) if len(df) else df
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
                agg = (rows.groupby("ratio")
                       .agg(x=(x, "mean"), x_std=(x, "std"), y=("top1", "mean"), y_std=("top1", "std"),
                            n=("seed", "nunique"))
                       .sort_values("x"))
                style = _STAGE_STYLE.get(stage, dict(linestyle=":", marker="s", alpha=0.8, suffix=f" ({stage})"))
                ax.errorbar(agg["x"] / factor, 100 * agg["y"],
                            xerr=agg["x_std"].fillna(0) / factor, yerr=100 * agg["y_std"].fillna(0),
                            color=color, linestyle=style["linestyle"], marker=style["marker"],
                            alpha=style["alpha"], capsize=3,
                            label=method_label(method, options) + style["suffix"])
        base = part[part["stage"] == "base"]
        if len(base):
            bx, by = base[x].mean() / factor, 100 * base["top1"].mean()
            ax.errorbar([bx], [by], xerr=[np.nan_to_num(base[x].std() / factor)],
                        yerr=[np.nan_to_num(100 * base["top1"].std())], color="black", marker="*",
                        markersize=13, linestyle="none", capsize=3, label="base (unpruned)", zorder=5)
            ax.axhline(by, color="black", linewidth=0.6, linestyle=":")
        seeds = part["seed"].nunique()
        ax.set_title(f"{dataset} / {arch} (tier {tier}, {seeds} seed{'s' if seeds != 1 else ''})",
                     fontsize=10)
        ax.set_xlabel(f"{stem} ({unit_text})")
        ax.set_ylabel("Top-1 test accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_axis_off()
    fig.text(0.01, 0.005, "mean ± std over seeds; error bars in both directions", fontsize=7, alpha=0.7)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    return fig


def tradeoff_macs(df: pd.DataFrame) -> Figure:
    return tradeoff(df, x="macs")


def tradeoff_params(df: pd.DataFrame) -> Figure:
    return tradeoff(df, x="params")


#: figure name (file stem) -> function of the records DataFrame
FIGURES: dict[str, Callable[[pd.DataFrame], Figure]] = {
    "tradeoff_macs": tradeoff_macs,
    "tradeoff_params": tradeoff_params,
}
FORMATS = ("png", "pdf")


def save(fig: Figure, stem: str | os.PathLike, formats: Iterable[str] = FORMATS, dpi: int = 150) -> list[Path]:
    """Write ``fig`` to ``stem.<format>`` for each format, atomically; close it; return the paths."""
    paths = []
    for fmt in formats:
        path = Path(f"{stem}.{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight",
                        metadata={"CreationDate": None} if fmt == "pdf" else None)
        paths.append(path)
    plt.close(fig)
    return paths


def write_figures(df: pd.DataFrame, out_dir: str | os.PathLike, names: Iterable[str] | None = None,
                  formats: Iterable[str] = FORMATS) -> list[Path]:
    """Every figure in ``names`` (default: all of :data:`FIGURES`) as ``out_dir/<name>.<format>``."""
    from .errors import UnknownNameError

    paths = []
    for name in names or FIGURES:
        if name not in FIGURES:
            raise UnknownNameError("figure", name, FIGURES)
        paths += save(FIGURES[name](df), Path(out_dir) / name, formats)
    return paths
