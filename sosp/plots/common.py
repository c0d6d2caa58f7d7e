"""Helpers shared by the figures: scale prefixes, placeholders, panel grids, legends and colours."""

from __future__ import annotations

from collections.abc import Iterable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..results import ORIGINAL, tidy


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
