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

SCHEMA_VERSION = 1
STAGES = ("base", "pruned", "finetuned", "widened")
#: value of ``method``/``target`` for records of unpruned models (base and widened stages)
NO_METHOD = "none"

#: every record column, in ``runs.csv`` order, with its meaning and unit
COLUMNS: dict[str, str] = {
    "tier": "tier name (config key `tier`)",
    "dataset": "data set name (sosp.data registry)",
    "arch": "architecture name (sosp.models registry)",
    "seed": "random seed of training (integer); pruning and fine-tuning reuse it",
    "method": "pruning method (sosp.prune.METHODS); 'none' for unpruned models",
    "method_options": "method options as canonical JSON ('{}' = defaults)",
    "ratio": "requested pruning ratio, fraction in [0, 1); what it counts is `target`; 0 if unpruned",
    "target": "what `ratio` counts: structures, macs or params; 'none' if unpruned",
    "stage": "base / pruned (one-shot, before fine-tuning) / finetuned / widened",
    "achieved_fraction": "fraction of structures (channels) actually removed, in [0, 1]",
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
_INTEGER_COLUMNS = ("seed", "samples", "params", "macs", "flops", "macs_fvcore", "train_epochs",
                    "finetune_epochs", "threads", "schema_version")
KEY_COLUMNS = ("tier", "dataset", "arch", "seed", "method", "method_options", "ratio", "target", "stage")
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
def make_record(stage: str, *, tier: str, dataset: str, arch: str, seed: int,
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
    record.update(tier=tier, dataset=dataset, arch=arch, seed=int(seed), stage=stage,
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


def prune_fields(report: Mapping) -> dict:
    """Record fields from a ``PruneResult.report`` (the rest of the report goes to ``details``)."""
    return {"achieved_fraction": report.get("achieved_fraction"),
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


def collect(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """One row per record (files, or directories searched for ``*.json``), columns in canonical
    order (latency columns after the known ones), ``details`` dropped; sorted by the key columns."""
    rows = []
    for path in record_paths(paths):
        record = read_record(path)
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
    df["target"] = df["target"].fillna(NO_METHOD)
    df["method_options"] = df["method_options"].map(canonical_options)
    df["ratio"] = pd.to_numeric(df["ratio"]).fillna(0.0).astype(float)
    for name in _INTEGER_COLUMNS:  # nullable integers: no 256.0 in runs.csv where some rows lack a value
        df[name] = pd.to_numeric(df[name]).round().astype("Int64")
    for name in ("top1", "top5", "loss", "achieved_fraction", "saliency_seconds", "selection_seconds",
                 "prune_seconds", "train_seconds", "finetune_seconds"):
        df[name] = pd.to_numeric(df[name]).astype(float)
    latency = sorted((c for c in df.columns if _LATENCY.match(c)), key=_latency_order)
    extra = sorted(c for c in df.columns if c not in COLUMNS and c not in latency)
    df = df[list(COLUMNS) + latency + extra]
    if len(df):
        order = df["stage"].map({s: i for i, s in enumerate(STAGES)})
        df = (df.assign(_stage=order)
              .sort_values(["tier", "dataset", "arch", "method", "method_options", "target", "ratio",
                            "_stage", "seed"], kind="stable")
              .drop(columns="_stage").reset_index(drop=True))
    return df


def write_runs_csv(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """``runs.csv``: one row per record, written atomically."""
    write_atomic(path, lambda tmp: df.to_csv(tmp, index=False))


# ---------------------------------------------------------------------------------------------------
# aggregation
# ---------------------------------------------------------------------------------------------------
GROUP_COLUMNS = ("tier", "dataset", "arch", "method", "method_options", "target", "ratio", "stage")
_PAIR = ["tier", "dataset", "arch", "seed"]


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Aggregate over seeds: one row per (tier, dataset, arch, method, options, target, ratio, stage).

    Reductions and changes are paired per seed with the ``base`` record of the same tier, data set,
    architecture and seed, then averaged; standard deviations are sample standard deviations over seeds
    (``ddof=1``; NaN for one seed). Columns (units in the names): ``seeds`` (count), ``achieved_fraction``
    (mean), ``params`` (mean count), ``params_reduction_pct`` (percent of base), ``macs_M`` (mean, 10^6
    multiply-accumulates per image), ``macs_reduction_pct``, ``top1_pct_mean``/``top1_pct_std``
    (percent), ``top1_change_pp_mean``/``top1_change_pp_std`` (percentage points vs base, negative = a
    loss), ``top5_pct_mean``, ``loss_mean`` (nats), ``prune_seconds_mean``.
    """
    df = tidy(df)
    df = df.astype({c: float for c in ("params", "macs", "top1", "top5", "loss")})
    base = (df[df["stage"] == "base"][_PAIR + ["params", "macs", "top1"]]
            .drop_duplicates(_PAIR, keep="last")
            .rename(columns={"params": "_base_params", "macs": "_base_macs", "top1": "_base_top1"}))
    m = df.merge(base, on=_PAIR, how="left")
    m["_params_red"] = 100.0 * (1.0 - m["params"] / m["_base_params"])
    m["_macs_red"] = 100.0 * (1.0 - m["macs"] / m["_base_macs"])
    m["_top1_pct"] = 100.0 * m["top1"]
    m["_top5_pct"] = 100.0 * m["top5"]
    m["_top1_change"] = 100.0 * (m["top1"] - m["_base_top1"])
    m["_macs_M"] = m["macs"] / 1e6
    m["prune_seconds"] = pd.to_numeric(m["prune_seconds"])
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
                prune_seconds_mean=("prune_seconds", "mean"))
           .reset_index())
    return out


_SUMMARY_VALUES = ["seeds", "achieved_fraction", "params", "params_reduction_pct", "macs_M",
                   "macs_reduction_pct", "top1_pct_mean", "top1_pct_std", "top1_change_pp_mean",
                   "top1_change_pp_std", "top5_pct_mean", "loss_mean", "prune_seconds_mean"]


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
            "dataset": r.dataset, "arch": r.arch,
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


def _sections(summary: pd.DataFrame):
    for (tier, dataset, arch), part in summary.groupby(["tier", "dataset", "arch"], sort=False):
        yield f"{dataset} / {arch} (tier {tier})", format_summary(part).drop(columns=["dataset", "arch"])


_NOTE = ("Mean ± sample standard deviation over seeds. Reductions and Δ are paired per seed with the "
         "unpruned base model. MACs are multiply-accumulates per image at batch 1 (FLOPs = 2 × MACs). "
         "`pruned` = one-shot, before fine-tuning.")


def summary_markdown(summary: pd.DataFrame) -> str:
    """Markdown: one table per (tier, data set, architecture), with a note on units."""
    parts = ["# Summary", "", _NOTE, ""]
    if not len(summary):
        parts.append("_no records_")
    for title, table in _sections(summary):
        parts += [f"## {title}", "", table.to_markdown(index=False, disable_numparse=True), ""]
    return "\n".join(parts).rstrip() + "\n"


_LATEX_HEADERS = {"removed structures (%)": "removed structures (\\%)", "params (10^3)": "params ($10^3$)",
                  "params removed (%)": "params removed (\\%)", "MACs (10^6)": "MACs ($10^6$)",
                  "MACs removed (%)": "MACs removed (\\%)", "top-1 (%)": "top-1 (\\%)",
                  "Δ top-1 vs base (pp)": "$\\Delta$ top-1 vs base (pp)"}


def summary_latex(summary: pd.DataFrame) -> str:
    """LaTeX (booktabs) tables, one per (tier, data set, architecture)."""
    parts = [f"% {_NOTE}", "% requires \\usepackage{booktabs}"]
    for title, table in _sections(summary):
        cells = table.astype(str).apply(lambda col: col.map(_latex_cell))
        cells.columns = [_LATEX_HEADERS.get(c, _latex_cell(c)) for c in table.columns]
        parts += [f"% {title}", cells.to_latex(index=False, escape=False)]
    return "\n".join(parts)


def _latex_cell(text: str) -> str:
    text = re.sub(r"([_%&#])", r"\\\1", text)
    return text.replace("±", "$\\pm$").replace("–", "--")


def write_tables(summary: pd.DataFrame, markdown_path: str | os.PathLike,
                 latex_path: str | os.PathLike | None = None) -> None:
    write_atomic(markdown_path, lambda tmp: tmp.write_text(summary_markdown(summary)))
    if latex_path is not None:
        write_atomic(latex_path, lambda tmp: tmp.write_text(summary_latex(summary)))


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
