"""The tidy record of one run, and its aggregation into ``runs.csv`` and summary tables.

One JSON record per (run, stage): a flat mapping from the names in :data:`COLUMNS` (plus latency
columns, see :func:`latency_column`) to scalars, and optionally a ``details`` mapping with nested data
(per-layer pruning counts, training history) that the tables ignore. ``collect`` turns records into a
DataFrame with one row per record; ``summary_table`` aggregates over seeds.

Units are part of every name or stated in :data:`COLUMNS`: ``params`` is a count of parameters,
``macs`` a count of multiply-accumulates per input image (batch 1), ``flops = 2 * macs``, ``top1`` and
``top5`` are fractions in [0, 1] (tables show ``*_pct``, percent, and ``*_pp``, percentage points),
``loss`` is the mean cross-entropy in nats per sample, times end in ``_seconds`` or ``_ms``.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from .errors import DataError
from .io import read_json, write_atomic

SCHEMA_VERSION = 2
STAGES = ("base", "pruned", "finetuned", "widened")
#: stages of unpruned models: the reference that reductions and accuracy changes are paired with
UNPRUNED = ("base", "widened")
#: value of ``method``/``target`` for records of unpruned models (base and widened stages)
NO_METHOD = "none"
#: value of ``variant`` for networks of the registry's own widths (not widened by the bottleneck study)
ORIGINAL = "original"

#: every record column, in ``runs.csv`` order, with its meaning and unit
COLUMNS: dict[str, str] = {
    "tier": "tier name (config key `tier`)",
    "dataset": "data set name (sosp.data registry)",
    "arch": "architecture name (sosp.models registry)",
    "variant": "network variant: 'original' (the registry's widths) or a widened network of the bottleneck "
               "study, e.g. 'bottleneck-x2' (bottleneck layers x2) or 'uniform-x1.1' (every layer x1.1)",
    "seed": "random seed of training (integer); pruning and fine-tuning reuse it",
    "method": "pruning method (sosp.prune.METHODS); 'none' for unpruned models",
    "method_options": "method options as canonical JSON ('{}' = defaults)",
    "ratio": "requested pruning ratio, fraction in [0, 1); what it counts is `target`; 0 if unpruned",
    "target": "what `ratio` counts: structures, macs or params; 'none' if unpruned",
    "stage": "base / pruned (one-shot, before fine-tuning) / finetuned / widened",
    "achieved_fraction": "fraction of structures (channels) actually removed, in [0, 1]",
    "min_channels": "per-group floor that selection applied: channels every group keeps at least (count)",
    "min_fraction": "per-group floor that selection applied: fraction of every group's channels kept at least "
                    "(the larger of the configured value and the method's own, e.g. 0.05 for EigenDamage/C-OBD)",
    "normalize": "saliency normalisation that selection applied: none or cost (none where the method's "
                 "scores cannot be divided by cost, e.g. random, layer-wise magnitude, EigenDamage)",
    "min_kept_fraction": "smallest fraction of its channels that any group keeps (EigenDamage: of its "
                         "eigen-directions, any layer side), in [0, 1]; near 0 means a layer collapsed",
    "removed_per_layer": "JSON object: each group (named after its first producer; EigenDamage: each layer's "
                         "output side) -> fraction of its channels removed",
    "samples": "calibration samples used for scoring (count)",
    "params": "number of parameters (count)",
    "macs": "multiply-accumulates per input image, batch 1 (count; torch FlopCounterMode / 2)",
    "flops": "floating-point operations per input image = 2 * macs (count)",
    "macs_fvcore": "multiply-accumulates per input image counted by fvcore (count; cross-check)",
    "eval_split": "split that top1/top5/loss were measured on",
    "top1": "top-1 accuracy, fraction in [0, 1]",
    "top5": "top-5 accuracy, fraction in [0, 1]",
    "loss": "mean cross-entropy, nats per sample",
    "saliency_seconds": "wall-clock seconds spent computing saliencies",
    "selection_seconds": "wall-clock seconds spent selecting structures",
    "prune_seconds": "wall-clock seconds of the whole pruning step (saliency + selection + surgery)",
    "train_epochs": "epochs of training from scratch",
    "train_seconds": "wall-clock seconds of training from scratch",
    "finetune_epochs": "epochs of fine-tuning after pruning (0 before fine-tuning)",
    "finetune_seconds": "wall-clock seconds of fine-tuning",
    "device_name": "device the latency was measured on",
    "dtype": "data type of the latency measurement",
    "threads": "torch intra-op threads during the latency measurement (count)",
    "torch_version": "torch version",
    "git_commit": "git commit of the sosp package (suffix '+dirty' if modified), null if unknown",
    "created_utc": "time the record was written (ISO 8601, UTC)",
    "schema_version": "version of this record layout",
}
_INTEGER_COLUMNS = ("seed", "samples", "min_channels", "params", "macs", "flops", "macs_fvcore", "train_epochs",
                    "finetune_epochs", "threads", "schema_version")
KEY_COLUMNS = ("tier", "dataset", "arch", "variant", "seed", "method", "method_options", "ratio", "target", "stage")
_LATENCY = re.compile(r"^latency_[a-z0-9]+_b\d+(_iqr)?_ms$")


def latency_column(device_type: str, batch_size: int, iqr: bool = False) -> str:
    """Name of a latency column: ``latency_cpu_b1_ms`` (median) or ``latency_cpu_b1_iqr_ms``."""
    return f"latency_{device_type}_b{int(batch_size)}{'_iqr' if iqr else ''}_ms"


def _latency_order(name: str) -> tuple:
    _, device, batch, *rest = name.split("_")
    return device, int(batch[1:]), rest[0] == "iqr"


def is_column(name: str) -> bool:
    return name in COLUMNS or bool(_LATENCY.match(name))


# ---------------------------------------------------------------------------------------------------
# building records
# ---------------------------------------------------------------------------------------------------
def make_record(stage: str, *, tier: str, dataset: str, arch: str, seed: int, variant: str = ORIGINAL,
                method: str = NO_METHOD, ratio: float = 0.0, target: str = NO_METHOD,
                method_options: Mapping | str | None = None, details: Mapping | None = None,
                **fields: Any) -> dict:
    """A complete record: every column of :data:`COLUMNS` present (``None`` where unknown).

    ``fields`` are further columns (``top1=...``, ``latency_cpu_b1_ms=...``); an unknown name is a
    programming error and raises ``ValueError``.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
    record: dict[str, Any] = {name: None for name in COLUMNS}
    record.update(tier=tier, dataset=dataset, arch=arch, variant=variant or ORIGINAL, seed=int(seed), stage=stage,
                  method=method or NO_METHOD, ratio=float(ratio or 0.0), target=target or NO_METHOD,
                  method_options=canonical_options(method_options),
                  torch_version=_torch_version(), git_commit=git_commit(),
                  created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                  schema_version=SCHEMA_VERSION)
    record = update_record(record, **fields)
    if details:
        record["details"] = dict(details)
    return record


def update_record(record: Mapping, details: Mapping | None = None, **fields: Any) -> dict:
    """A copy of ``record`` with ``fields`` set (known columns only) and ``details`` merged."""
    unknown = [name for name in fields if not is_column(name)]
    if unknown:
        raise ValueError(f"unknown record field(s): {', '.join(sorted(unknown))}")
    out = dict(record)
    out.update({name: _scalar(value) for name, value in fields.items()})
    if details:
        out["details"] = {**out.get("details", {}), **details}
    return out


def metric_fields(metrics: Mapping, split: str = "test") -> dict:
    """Record fields from ``sosp.train.evaluate``'s result."""
    return {"top1": metrics.get("top1"), "top5": metrics.get("top5"), "loss": metrics.get("loss"),
            "eval_split": split}


def removed_per_layer(report: Mapping) -> dict[str, float]:
    """Fraction of channels removed per group (channel methods: ``per_group``) or per layer output side
    (EigenDamage: ``per_layer`` with ``directions_out``/``kept_out``)."""
    if report.get("per_group"):
        return {r["group"]: r["removed"] / r["size"] for r in report["per_group"] if r["size"]}
    return {r["layer"]: 1 - r["kept_out"] / r["directions_out"] for r in report.get("per_layer") or []
            if r.get("directions_out")}


def min_kept_fraction(report: Mapping) -> float | None:
    if report.get("min_kept_fraction") is not None:
        return report["min_kept_fraction"]
    if report.get("per_group"):
        return min((r["size"] - r["removed"]) / r["size"] for r in report["per_group"] if r["size"])
    kept = [r[f"kept_{side}"] / r[f"directions_{side}"] for r in report.get("per_layer") or []
            for side in ("in", "out") if r.get(f"directions_{side}")]
    return min(kept) if kept else None


def prune_fields(report: Mapping) -> dict:
    """Record fields from a ``PruneResult.report`` (the rest of the report goes to ``details``)."""
    per_layer = removed_per_layer(report)
    return {"achieved_fraction": report.get("achieved_fraction"),
            "min_channels": report.get("min_channels"), "min_fraction": report.get("min_fraction"),
            "normalize": report.get("normalize"), "min_kept_fraction": min_kept_fraction(report),
            "removed_per_layer": json.dumps({k: round(v, 6) for k, v in per_layer.items()}) if per_layer else None,
            "saliency_seconds": report.get("saliency_seconds"),
            "selection_seconds": report.get("selection_seconds"),
            "prune_seconds": report.get("prune_seconds"),
            "params": report.get("params_after"), "macs": report.get("macs_after")}


def measurement_fields(measurement: Mapping) -> dict:
    """Record fields from ``sosp.measure.measure``: counts, then one median/IQR column pair per
    (device type, batch size) latency entry, and the device description of the first entry."""
    fields: dict[str, Any] = {k: measurement.get(k) for k in ("params", "macs", "flops", "macs_fvcore")
                              if measurement.get(k) is not None}
    for entry in measurement.get("latency") or []:
        device_type = _device_type(entry.get("device") or entry.get("device_name") or "cpu")
        batch = entry["batch_size"]
        fields[latency_column(device_type, batch)] = entry.get("median_ms")
        fields[latency_column(device_type, batch, iqr=True)] = entry.get("iqr_ms")
        for key in ("device_name", "dtype", "threads", "torch_version"):
            if entry.get(key) is not None:
                fields.setdefault(key, entry[key])
    return fields


def canonical_options(options: Mapping | str | None) -> str:
    """Method options as canonical JSON (sorted keys) so equal settings compare equal."""
    if options is None or options == "":
        return "{}"
    if isinstance(options, str):
        options = json.loads(options)
    return json.dumps(dict(options), sort_keys=True, separators=(",", ":"), default=str)


def method_label(method: str, options: str | Mapping | None = None) -> str:
    """``sosp_h`` for default options, ``sosp_h[combine=joint]`` otherwise."""
    opts = json.loads(canonical_options(options))
    if not opts:
        return method
    return f"{method}[{','.join(f'{k}={v}' for k, v in sorted(opts.items()))}]"


# ---------------------------------------------------------------------------------------------------
# collecting records
# ---------------------------------------------------------------------------------------------------
def record_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given, and every ``*.json`` below each directory given; sorted, no duplicates."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            found.update(q for q in p.rglob("*.json") if not q.name.startswith("."))
        elif p.exists():
            found.add(p)
        else:
            raise DataError(f"record file not found: {p}")
    return sorted(found)


def read_record(path: str | os.PathLike) -> dict:
    try:
        record = read_json(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read record {path}: {exc}") from None
    if not isinstance(record, dict):
        raise DataError(f"record {path} is not a JSON object")
    missing = [k for k in ("tier", "dataset", "arch", "seed", "stage") if k not in record]
    if missing:
        raise DataError(f"record {path} lacks field(s) {', '.join(missing)}")
    if record["stage"] not in STAGES:
        raise DataError(f"record {path} has unknown stage {record['stage']!r}")
    return record


def _with_layer_fields(record: dict) -> dict:
    """Records written before ``removed_per_layer``/``min_kept_fraction`` existed get them from their
    own ``details.prune_report`` (the same counts)."""
    report = (record.get("details") or {}).get("prune_report")
    if record.get("removed_per_layer") is None and report:
        fields = prune_fields(report)
        record = {**record, **{k: fields[k] for k in ("removed_per_layer", "min_kept_fraction")}}
    return record


def collect(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """One row per record (files, or directories searched for ``*.json``), columns in canonical
    order (latency columns after the known ones), ``details`` dropped; sorted by the key columns."""
    rows = []
    for path in record_paths(paths):
        record = _with_layer_fields(read_record(path))
        rows.append({k: (json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v)
                     for k, v in record.items() if k != "details"})
    return tidy(pd.DataFrame(rows))


def tidy(df: pd.DataFrame) -> pd.DataFrame:
    """Canonical column order, defaults for missing key columns, stable sort."""
    df = df.copy()
    for name in COLUMNS:
        if name not in df.columns:
            df[name] = None
    df["method"] = df["method"].fillna(NO_METHOD)
    df["variant"] = df["variant"].fillna(ORIGINAL)  # schema version 1 records have no variant
    df["target"] = df["target"].fillna(NO_METHOD)
    df["method_options"] = df["method_options"].map(canonical_options)
    df["ratio"] = pd.to_numeric(df["ratio"]).fillna(0.0).astype(float)
    for name in _INTEGER_COLUMNS:  # nullable integers: no 256.0 in runs.csv where some rows lack a value
        df[name] = pd.to_numeric(df[name]).round().astype("Int64")
    for name in ("top1", "top5", "loss", "achieved_fraction", "min_fraction", "min_kept_fraction",
                 "saliency_seconds", "selection_seconds",
                 "prune_seconds", "train_seconds", "finetune_seconds"):
        df[name] = pd.to_numeric(df[name]).astype(float)
    latency = sorted((c for c in df.columns if _LATENCY.match(c)), key=_latency_order)
    extra = sorted(c for c in df.columns if c not in COLUMNS and c not in latency)
    df = df[list(COLUMNS) + latency + extra]
    if len(df):
        order = df["stage"].map({s: i for i, s in enumerate(STAGES)})
        df = (df.assign(_stage=order, _variant=df["variant"] != ORIGINAL)
              .sort_values(["tier", "dataset", "arch", "_variant", "variant", "method", "method_options",
                            "target", "ratio", "_stage", "seed"], kind="stable")
              .drop(columns=["_stage", "_variant"]).reset_index(drop=True))
    return df


def write_runs_csv(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """``runs.csv``: one row per record, written atomically."""
    write_atomic(path, lambda tmp: df.to_csv(tmp, index=False))


# ---------------------------------------------------------------------------------------------------
# aggregation
# ---------------------------------------------------------------------------------------------------
GROUP_COLUMNS = ("tier", "dataset", "arch", "variant", "method", "method_options", "target", "ratio", "stage")
_PAIR = ["tier", "dataset", "arch", "variant", "seed"]
_SECTION = ["tier", "dataset", "arch", "variant"]


def _paired(df: pd.DataFrame) -> pd.DataFrame:
    """Records with the unpruned reference of their seed (``_base_*``; stage base or widened, same tier,
    data set, architecture and variant) and derived percent columns."""
    df = tidy(df)
    df = df.astype({c: float for c in ("params", "macs", "top1", "top5", "loss")})
    base = (df[df["stage"].isin(UNPRUNED)][_PAIR + ["params", "macs", "top1"]]
            .drop_duplicates(_PAIR, keep="last")
            .rename(columns={"params": "_base_params", "macs": "_base_macs", "top1": "_base_top1"}))
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
    out = (m.groupby(list(GROUP_COLUMNS), sort=False, dropna=False)
           .agg(seeds=("seed", "nunique"),
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
                saliency_seconds_mean=("saliency_seconds", "mean"))
           .reset_index())
    return out


_SUMMARY_VALUES = ["seeds", "achieved_fraction", "params", "params_reduction_pct", "macs_M",
                   "macs_reduction_pct", "top1_pct_mean", "top1_pct_std", "top1_change_pp_mean",
                   "top1_change_pp_std", "top5_pct_mean", "loss_mean", "prune_seconds_mean",
                   "saliency_seconds_mean"]


def _pm(mean: float, std: float, digits: int = 2, signed: bool = False) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        text += f" ± {std:.{digits}f}"
    return text


def _num(value: float, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, fmt)


def format_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """Human-readable version of :func:`summary_table` (strings, units in the headers)."""
    rows = []
    for r in summary.itertuples(index=False):
        rows.append({
            "dataset": r.dataset, "arch": r.arch, "variant": r.variant,
            "method": method_label(r.method, r.method_options),
            "target": r.target, "ratio": _num(r.ratio, ".2f"), "stage": r.stage, "seeds": int(r.seeds),
            "removed structures (%)": _num(100 * r.achieved_fraction, ".1f")
            if r.achieved_fraction == r.achieved_fraction else "–",
            "params (10^3)": _num(r.params / 1e3, ".1f"),
            "params removed (%)": _num(r.params_reduction_pct, ".1f"),
            "MACs (10^6)": _num(r.macs_M, ".3f"),
            "MACs removed (%)": _num(r.macs_reduction_pct, ".1f"),
            "top-1 (%)": _pm(r.top1_pct_mean, r.top1_pct_std),
            "Δ top-1 vs base (pp)": _pm(r.top1_change_pp_mean, r.top1_change_pp_std, signed=True),
        })
    return pd.DataFrame(rows)


def _title(tier: str, dataset: str, arch: str, variant: str) -> str:
    widened = "" if variant == ORIGINAL else f", widened {variant}"
    return f"{dataset} / {arch}{widened} (tier {tier})"


def _sections(summary: pd.DataFrame):
    summary = summary.assign(variant=summary["variant"].fillna(ORIGINAL)) if "variant" in summary else \
        summary.assign(variant=ORIGINAL)
    for key, part in summary.groupby(_SECTION, sort=False):
        yield _title(*key), format_summary(part).drop(columns=["dataset", "arch", "variant"])


_NOTE = ("Mean ± sample standard deviation over seeds. Reductions and Δ are paired per seed with the "
         "unpruned model (base, or the widened network for a widened variant). MACs are "
         "multiply-accumulates per image at batch 1 (FLOPs = 2 × MACs). `pruned` = one-shot, before "
         "fine-tuning.")


#: what a comparison at each target holds equal, for the table titles
COMPARISON = {"structures": "equal structure ratio (every method removes the same fraction of channels; "
                            "their MACs differ)",
              "macs": "equal MACs (every method removes the same fraction of the base model's MACs)",
              "params": "equal parameters (every method removes the same fraction of the base model's "
                        "parameters)"}


def paper_sections(df: pd.DataFrame):
    """Paper-style tables, one per (tier, data set, architecture, variant) and target, so each table
    compares the methods at one thing held equal (:data:`COMPARISON`): the unpruned model, then every
    (ratio, method) after fine-tuning: params and MACs removed (%), the smallest fraction of channels
    any layer keeps (%, layer collapse shows as ~0), top-1 (%) mean ± std over seeds, its change from
    the unpruned model (pp), and the one-shot top-1 before fine-tuning."""
    m = _paired(df)
    m["_min_kept_pct"] = 100.0 * pd.to_numeric(m["min_kept_fraction"])
    for key, part in m.groupby(_SECTION, sort=False):
        base = part[part["stage"].isin(UNPRUNED)]
        pruned = part[~part["stage"].isin(UNPRUNED)]
        for target in sorted(pruned["target"].unique(), key=lambda t: (t != "structures", t)):
            rows = []
            if len(base):
                rows.append({"method": f"unpruned ({base['stage'].iloc[0]})", "ratio": "–",
                             "params (10^3)": _num(base["params"].mean() / 1e3, ".1f"), "params ↓ (%)": "–",
                             "MACs (10^6)": _num(base["_macs_M"].mean(), ".3f"), "MACs ↓ (%)": "–",
                             "min kept (%)": "–",
                             "top-1 (%)": _pm(base["_top1_pct"].mean(), base["_top1_pct"].std()),
                             "Δ top-1 (pp)": "–", "one-shot top-1 (%)": "–"})
            runs_of = pruned[pruned["target"] == target]
            for (ratio, method, options), runs in runs_of.groupby(["ratio", "method", "method_options"], sort=True):
                fine, shot = runs[runs["stage"] == "finetuned"], runs[runs["stage"] == "pruned"]
                main = fine if len(fine) else shot
                rows.append({
                    "method": method_label(method, options),
                    "ratio": _num(ratio, ".2f") + ("" if target == "structures" else f" ({target})"),
                    "params (10^3)": _num(main["params"].mean() / 1e3, ".1f"),
                    "params ↓ (%)": _num(main["_params_red"].mean(), ".1f"),
                    "MACs (10^6)": _num(main["_macs_M"].mean(), ".3f"),
                    "MACs ↓ (%)": _num(main["_macs_red"].mean(), ".1f"),
                    "min kept (%)": _num(shot["_min_kept_pct"].mean(), ".1f") if len(shot) else "–",
                    "top-1 (%)": _pm(fine["_top1_pct"].mean(), fine["_top1_pct"].std()) if len(fine) else "–",
                    "Δ top-1 (pp)": _pm(fine["_top1_change"].mean(), fine["_top1_change"].std(), signed=True)
                    if len(fine) else "–",
                    "one-shot top-1 (%)": _pm(shot["_top1_pct"].mean(), shot["_top1_pct"].std())
                    if len(shot) else "–",
                })
            yield f"{_title(*key)}: compared at {COMPARISON.get(target, target)}", pd.DataFrame(rows)


def timing_sections(df: pd.DataFrame):
    """Scoring cost per method, one table per (tier, data set, architecture, variant): saliency seconds
    (scoring only) and prune seconds (scoring + selection + surgery), mean ± std over seeds (each seed's
    value first averaged over its ratios), calibration samples, and the saliency time relative to
    first-order Taylor where present."""
    m = tidy(df)
    m = m[m["stage"] == "pruned"]
    for key, part in m.groupby(_SECTION, sort=False):
        per_seed = (part.groupby(["method", "method_options", "seed"], sort=True)
                    .agg(sal=("saliency_seconds", "mean"), prune=("prune_seconds", "mean"),
                         samples=("samples", "max"))
                    .reset_index())
        agg = (per_seed.groupby(["method", "method_options"], sort=True)
               .agg(sal_mean=("sal", "mean"), sal_std=("sal", "std"), prune_mean=("prune", "mean"),
                    prune_std=("prune", "std"), samples=("samples", "max"), seeds=("seed", "nunique"))
               .reset_index())
        taylor = agg[(agg["method"] == "taylor") & (agg["method_options"] == "{}")]["sal_mean"]
        ref = float(taylor.iloc[0]) if len(taylor) and taylor.iloc[0] > 0 else float("nan")  # NaN: no Taylor reference
        rows = [{"method": method_label(r.method, r.method_options), "seeds": int(r.seeds),
                 "samples": "–" if pd.isna(r.samples) else f"{int(r.samples)}",
                 "saliency (s)": _pm(r.sal_mean, r.sal_std, 3), "prune (s)": _pm(r.prune_mean, r.prune_std, 3),
                 "saliency / taylor (×)": _num(r.sal_mean / ref, ".2f")}
                for r in agg.itertuples(index=False)]
        if rows:
            yield _title(*key), pd.DataFrame(rows)


_TIMING_NOTE = ("Wall-clock seconds of one pruning job's scoring (saliency) and of scoring + selection + "
                "surgery (prune), on the job's device and threads; mean ± std over seeds. Saliencies are "
                "computed once per (model, method) and shared by every ratio.")
_PAPER_NOTE = ("Top-1 after fine-tuning, mean ± sample standard deviation over seeds; ↓ = reduction "
               "relative to the unpruned model of the same seed; Δ = change of top-1 in percentage "
               "points; one-shot = before fine-tuning. MACs per image at batch 1.")

#: table name -> (title, note, function of the records DataFrame yielding (section title, table))
TABLES = {
    "summary": ("Summary", _NOTE, lambda df: _sections(summary_table(df))),
    "paper": ("Pruning results", _PAPER_NOTE, paper_sections),
    "timing": ("Scoring time per method", _TIMING_NOTE, timing_sections),
}


def _markdown(title: str, note: str, sections) -> str:
    parts = [f"# {title}", "", note, ""]
    sections = list(sections)
    if not sections:
        parts.append("_no records_")
    for heading, table in sections:
        parts += [f"## {heading}", "", table.to_markdown(index=False, disable_numparse=True), ""]
    return "\n".join(parts).rstrip() + "\n"


_LATEX_HEADERS = {"removed structures (%)": "removed structures (\\%)", "params (10^3)": "params ($10^3$)",
                  "params removed (%)": "params removed (\\%)", "MACs (10^6)": "MACs ($10^6$)",
                  "MACs removed (%)": "MACs removed (\\%)", "top-1 (%)": "top-1 (\\%)",
                  "Δ top-1 vs base (pp)": "$\\Delta$ top-1 vs base (pp)",
                  "params ↓ (%)": "params $\\downarrow$ (\\%)", "MACs ↓ (%)": "MACs $\\downarrow$ (\\%)",
                  "Δ top-1 (pp)": "$\\Delta$ top-1 (pp)", "one-shot top-1 (%)": "one-shot top-1 (\\%)",
                  "saliency / taylor (×)": "saliency / taylor ($\\times$)"}


def _latex(note: str, sections) -> str:
    parts = [f"% {note}", "% requires \\usepackage{booktabs}"]
    for heading, table in sections:
        cells = table.astype(str).apply(lambda col: col.map(_latex_cell))
        cells.columns = [_LATEX_HEADERS.get(c, _latex_cell(c)) for c in table.columns]
        parts += [f"% {heading}", cells.to_latex(index=False, escape=False)]
    return "\n".join(parts)


def summary_markdown(summary: pd.DataFrame) -> str:
    """Markdown: one table per (tier, data set, architecture, variant), with a note on units."""
    return _markdown("Summary", _NOTE, _sections(summary))


def summary_latex(summary: pd.DataFrame) -> str:
    """LaTeX (booktabs) tables, one per (tier, data set, architecture, variant)."""
    return _latex(_NOTE, _sections(summary))


def _latex_cell(text: str) -> str:
    text = re.sub(r"([_%&#])", r"\\\1", text)
    return (text.replace("±", "$\\pm$").replace("–", "--").replace("↓", "$\\downarrow$")
            .replace("×", "$\\times$").replace("Δ", "$\\Delta$"))


def write_tables(summary: pd.DataFrame, markdown_path: str | os.PathLike,
                 latex_path: str | os.PathLike | None = None) -> None:
    write_atomic(markdown_path, lambda tmp: tmp.write_text(summary_markdown(summary)))
    if latex_path is not None:
        write_atomic(latex_path, lambda tmp: tmp.write_text(summary_latex(summary)))


def _html(title: str, note: str, sections) -> str:
    import html

    parts = [f"<h2>{html.escape(title)}</h2>", f"<p>{html.escape(note)}</p>"]
    sections = list(sections)
    if not sections:
        parts.append("<p><em>no records</em></p>")
    for heading, table in sections:
        parts += [f"<h3>{html.escape(heading)}</h3>", table.to_html(index=False, border=0, classes="table")]
    return "\n".join(parts) + "\n"


TABLE_FORMATS = ("md", "tex", "html")


def write_named_tables(df: pd.DataFrame, out_dir: str | os.PathLike, names: Iterable[str] | None = None,
                       formats: Iterable[str] = TABLE_FORMATS) -> list[Path]:
    """Tables of :data:`TABLES` (default all) from the records ``df``: ``out_dir/<name>.md`` (Markdown),
    ``.tex`` (LaTeX, booktabs) and ``.html`` (for the Snakemake report)."""
    from .errors import UnknownNameError

    paths = []
    for name in names or TABLES:
        if name not in TABLES:
            raise UnknownNameError("table", name, TABLES)
        title, note, sections = TABLES[name]
        sections = list(sections(df))
        for fmt in formats:
            path = Path(out_dir) / f"{name}.{fmt}"
            render = {"md": lambda: _markdown(title, note, sections), "tex": lambda: _latex(note, sections),
                      "html": lambda: _html(title, note, sections)}
            if fmt not in render:
                raise UnknownNameError("table format", fmt, render)
            text = render[fmt]()
            write_atomic(path, lambda tmp, text=text: tmp.write_text(text))
            paths.append(path)
    return paths


def read_runs_csv(path: str | os.PathLike) -> pd.DataFrame:
    """``runs.csv`` back as the records DataFrame (the inverse of :func:`write_runs_csv`)."""
    try:
        df = pd.read_csv(path, dtype={"method_options": str})
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    missing = [k for k in ("tier", "dataset", "arch", "seed", "stage") if k not in df.columns]
    if missing:
        raise DataError(f"{path} lacks column(s) {', '.join(missing)}: is it a runs.csv?")
    return tidy(df)


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------
def _scalar(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (ValueError, RuntimeError):
            pass
    return value


def _device_type(name: str) -> str:
    name = str(name).lower()
    for kind in ("cuda", "mps", "xpu"):
        if kind in name or "nvidia" in name and kind == "cuda":
            return kind
    return "cpu"


def _torch_version() -> str | None:
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


_GIT: dict[str, str | None] = {}


def git_commit(where: str | os.PathLike | None = None) -> str | None:
    """Commit of the git checkout holding ``where`` (default: this package), ``+dirty`` if files below
    ``where`` differ from it (modified or untracked)."""
    where = str(Path(where or Path(__file__).parent).resolve())
    if where not in _GIT:
        try:
            head = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True,
                                  text=True, timeout=10)
            commit = head.stdout.strip() if head.returncode == 0 else None
            if commit:
                dirty = subprocess.run(["git", "-C", where, "status", "--porcelain", "--", "."],
                                       capture_output=True, text=True, timeout=10)
                if dirty.returncode == 0 and dirty.stdout.strip():
                    commit += "+dirty"
        except (OSError, subprocess.SubprocessError):
            commit = None
        _GIT[where] = commit
    return _GIT[where]
