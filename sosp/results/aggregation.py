"""Aggregation of records over seeds: every pruned record is paired with the unpruned model of its seed
(reductions and accuracy changes are per seed), then means and sample standard deviations."""

from __future__ import annotations

import pandas as pd

from .collection import tidy
from .records import UNPRUNED

GROUP_COLUMNS = ("tier", "dataset", "arch", "variant", "method", "method_options", "target", "ratio", "stage")
_PAIR = ["tier", "dataset", "arch", "variant", "seed"]
_SECTION = ["tier", "dataset", "arch", "variant"]


def _paired(df: pd.DataFrame) -> pd.DataFrame:
    """Records with the unpruned reference of their seed (``_base_*``; stage base or widened, same tier,
    data set, architecture and variant) and derived percent columns."""
    df = tidy(df)
    df = df.astype({c: float for c in ("params", "macs", "top1", "top5", "loss")})
    base = (
        df[df["stage"].isin(UNPRUNED)][_PAIR + ["params", "macs", "top1"]]
        .drop_duplicates(_PAIR, keep="last")
        .rename(columns={"params": "_base_params", "macs": "_base_macs", "top1": "_base_top1"})
    )
    m = df.merge(base, on=_PAIR, how="left")
    m["_params_red"] = 100.0 * (1.0 - m["params"] / m["_base_params"])
    m["_macs_red"] = 100.0 * (1.0 - m["macs"] / m["_base_macs"])
    m["_top1_pct"] = 100.0 * m["top1"]
    m["_top5_pct"] = 100.0 * m["top5"]
    m["_top1_change"] = 100.0 * (m["top1"] - m["_base_top1"])
    m["_macs_M"] = m["macs"] / 1e6
    for name in ("prune_seconds", "saliency_seconds"):
        m[name] = pd.to_numeric(m[name])
    return m


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Aggregate over seeds: one row per (tier, dataset, arch, variant, method, options, target, ratio,
    stage).

    Reductions and changes are paired per seed with the unpruned record (stage ``base``, or ``widened``
    for a widened variant) of the same tier, data set, architecture, variant and seed, then averaged;
    standard deviations are sample standard deviations over seeds (``ddof=1``; NaN for one seed).
    Columns (units in the names): ``seeds`` (count), ``achieved_fraction`` (mean), ``params`` (mean
    count), ``params_reduction_pct`` (percent of base), ``macs_M`` (mean, 10^6 multiply-accumulates per
    image), ``macs_reduction_pct``, ``top1_pct_mean``/``top1_pct_std`` (percent),
    ``top1_change_pp_mean``/``top1_change_pp_std`` (percentage points vs base, negative = a loss),
    ``top5_pct_mean``, ``loss_mean`` (nats), ``prune_seconds_mean``, ``saliency_seconds_mean``.
    """
    m = _paired(df)
    if not len(m):
        return pd.DataFrame(columns=list(GROUP_COLUMNS) + _SUMMARY_VALUES)
    out = (
        m.groupby(list(GROUP_COLUMNS), sort=False, dropna=False)
        .agg(
            seeds=("seed", "nunique"),
            achieved_fraction=("achieved_fraction", "mean"),
            params=("params", "mean"),
            params_reduction_pct=("_params_red", "mean"),
            macs_M=("_macs_M", "mean"),
            macs_reduction_pct=("_macs_red", "mean"),
            top1_pct_mean=("_top1_pct", "mean"),
            top1_pct_std=("_top1_pct", "std"),
            top1_change_pp_mean=("_top1_change", "mean"),
            top1_change_pp_std=("_top1_change", "std"),
            top5_pct_mean=("_top5_pct", "mean"),
            loss_mean=("loss", "mean"),
            prune_seconds_mean=("prune_seconds", "mean"),
            saliency_seconds_mean=("saliency_seconds", "mean"),
        )
        .reset_index()
    )
    return out


_SUMMARY_VALUES = [
    "seeds",
    "achieved_fraction",
    "params",
    "params_reduction_pct",
    "macs_M",
    "macs_reduction_pct",
    "top1_pct_mean",
    "top1_pct_std",
    "top1_change_pp_mean",
    "top1_change_pp_std",
    "top5_pct_mean",
    "loss_mean",
    "prune_seconds_mean",
    "saliency_seconds_mean",
]
