"""Figures, each a function of the tidy records DataFrame (``sosp.results.collect``) alone, plus, for the
layer-wise pruning ratios, the bottleneck analyses that ``sosp bottleneck`` writes beside the records.

Add a figure by writing ``def my_figure(df, **context) -> Figure`` in one of this package's modules
(:mod:`.tradeoff`: accuracy against cost; :mod:`.timing`: scoring time and latency; :mod:`.layers`:
per-layer pruning ratios; :mod:`.widened`: the bottleneck study; :mod:`.common`: shared helpers) and
registering it in :data:`FIGURES`; the ``sosp report`` command and the workflow's figure rules write
every listed figure as PNG and PDF. ``context`` holds ``bottleneck`` (a list of analysis mappings,
possibly empty). Every axis names its quantity and unit.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before any figure module imports pyplot
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ..io import atomic_path  # noqa: E402
from .layers import layer_ratios, method_layer_ratios  # noqa: E402
from .timing import latency_macs, scoring_time  # noqa: E402
from .tradeoff import oneshot_ratio, tradeoff, tradeoff_macs, tradeoff_params  # noqa: E402
from .widened import bottleneck_params  # noqa: E402

__all__ = [
    "FIGURES",
    "FORMATS",
    "save",
    "write_figures",
    "tradeoff",
    "tradeoff_macs",
    "tradeoff_params",
    "oneshot_ratio",
    "scoring_time",
    "latency_macs",
    "bottleneck_params",
    "layer_ratios",
    "method_layer_ratios",
]

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
    from ..errors import UnknownNameError

    names = list(names or FIGURES)
    for name in names:  # all names checked before the first file is written
        if name not in FIGURES:
            raise UnknownNameError("figure", name, FIGURES)
    bottleneck = list(bottleneck or [])
    paths = []
    for name in names:
        paths += save(FIGURES[name](df, bottleneck=bottleneck), Path(out_dir) / name, formats)
    return paths
