"""The tidy record of one run: its columns (names, meanings, units), how a record is built from a
pruning report or a measurement, and how records are collected into one DataFrame (``runs.csv``).

One JSON record per (run, stage): a flat mapping from the names in :data:`COLUMNS` (plus latency
columns, see :func:`latency_column`) to scalars, and optionally a ``details`` mapping with nested data
(per-layer pruning counts, training history) that the tables ignore.

Units are part of every name or stated in :data:`COLUMNS`: ``params`` is a count of parameters,
``macs`` a count of multiply-accumulates per input image (batch 1), ``flops = 2 * macs``, ``top1`` and
``top5`` are fractions in [0, 1] (tables show ``*_pct``, percent, and ``*_pp``, percentage points),
``loss`` is the mean cross-entropy in nats per sample, times end in ``_seconds`` or ``_ms``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

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
    "method": "pruning method (a name of sosp.registry); 'none' for unpruned models",
    "method_options": "method options as canonical JSON ('{}' = defaults)",
    "method_package": "package (distribution) and version that provided the method, e.g. 'sosp-bench 0.1.0' "
    "(entry-point group sosp.methods); null if unpruned",
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
    "calibration_effective_samples": "effective number of calibration samples the method's score rests on: "
    "(sum w)^2 / sum w^2 of the per-sample loss weights of the terms it uses (the smaller of the two for "
    "SOSP), sosp.calibration; null for data-free methods",
    "calibration_min_class_share": "smallest share of the score's sample weight carried by one class, "
    "relative to the uniform share 1/C (1 = even, ~0 = that class gets no say); null for data-free methods",
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
    "config_hash": "hash of the tier config keys that decide the record (sosp.config_hash; stamped by the "
    "workflow's measuring job), null for records made outside the workflow",
    "created_utc": "time the record was written (ISO 8601, UTC)",
    "schema_version": "version of this record layout",
}
_INTEGER_COLUMNS = (
    "seed",
    "samples",
    "min_channels",
    "params",
    "macs",
    "flops",
    "macs_fvcore",
    "train_epochs",
    "finetune_epochs",
    "threads",
    "schema_version",
)
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
def make_record(
    stage: str,
    *,
    tier: str,
    dataset: str,
    arch: str,
    seed: int,
    variant: str = ORIGINAL,
    method: str = NO_METHOD,
    ratio: float = 0.0,
    target: str = NO_METHOD,
    method_options: Mapping | str | None = None,
    details: Mapping | None = None,
    **fields: Any,
) -> dict:
    """A complete record: every column of :data:`COLUMNS` present (``None`` where unknown).

    ``fields`` are further columns (``top1=...``, ``latency_cpu_b1_ms=...``); an unknown name is a
    programming error and raises ``ValueError``.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
    record: dict[str, Any] = {name: None for name in COLUMNS}
    record.update(
        tier=tier,
        dataset=dataset,
        arch=arch,
        variant=variant or ORIGINAL,
        seed=int(seed),
        stage=stage,
        method=method or NO_METHOD,
        ratio=float(ratio or 0.0),
        target=target or NO_METHOD,
        method_options=canonical_options(method_options),
        torch_version=_torch_version(),
        git_commit=git_commit(),
        created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        schema_version=SCHEMA_VERSION,
    )
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
    return {"top1": metrics.get("top1"), "top5": metrics.get("top5"), "loss": metrics.get("loss"), "eval_split": split}


def removed_per_layer(report: Mapping) -> dict[str, float]:
    """Fraction of channels removed per group (channel methods: ``per_group``) or per layer output side
    (EigenDamage: ``per_layer`` with ``directions_out``/``kept_out``)."""
    if report.get("per_group"):
        return {r["group"]: r["removed"] / r["size"] for r in report["per_group"] if r["size"]}
    return {
        r["layer"]: 1 - r["kept_out"] / r["directions_out"]
        for r in report.get("per_layer") or []
        if r.get("directions_out")
    }


def min_kept_fraction(report: Mapping) -> float | None:
    if report.get("min_kept_fraction") is not None:
        return report["min_kept_fraction"]
    if report.get("per_group"):
        return min((r["size"] - r["removed"]) / r["size"] for r in report["per_group"] if r["size"])
    kept = [
        r[f"kept_{side}"] / r[f"directions_{side}"]
        for r in report.get("per_layer") or []
        for side in ("in", "out")
        if r.get(f"directions_{side}")
    ]
    return min(kept) if kept else None


def calibration_fields(diagnostics: Mapping | None) -> dict:
    """The record's calibration columns from ``sosp.calibration.diagnose`` (the method's own terms)."""
    if not diagnostics or not diagnostics.get("terms"):
        return {"calibration_effective_samples": None, "calibration_min_class_share": None}
    terms = diagnostics["terms"]
    shares = [diagnostics[f"min_class_share_{t}"] for t in terms if diagnostics.get(f"min_class_share_{t}") is not None]
    return {
        "calibration_effective_samples": min(diagnostics[f"effective_samples_{t}"] for t in terms),
        "calibration_min_class_share": min(shares) if shares else None,
    }


def prune_fields(report: Mapping) -> dict:
    """Record fields from a ``PruneResult.report`` (the rest of the report goes to ``details``)."""
    per_layer = removed_per_layer(report)
    return {
        "achieved_fraction": report.get("achieved_fraction"),
        "min_channels": report.get("min_channels"),
        "min_fraction": report.get("min_fraction"),
        "normalize": report.get("normalize"),
        "min_kept_fraction": min_kept_fraction(report),
        **calibration_fields(report.get("calibration")),
        "removed_per_layer": json.dumps({k: round(v, 6) for k, v in per_layer.items()}) if per_layer else None,
        "saliency_seconds": report.get("saliency_seconds"),
        "selection_seconds": report.get("selection_seconds"),
        "prune_seconds": report.get("prune_seconds"),
        "params": report.get("params_after"),
        "macs": report.get("macs_after"),
    }


#: identity of a model, carried from the record of the model it was made from
_IDENTITY = ("tier", "dataset", "arch", "variant")
#: fields of the pruned record that the fine-tuned record keeps (the cost of getting there)
CARRIED = (
    "achieved_fraction",
    "samples",
    "saliency_seconds",
    "selection_seconds",
    "prune_seconds",
    "train_epochs",
    "min_channels",
    "min_fraction",
    "normalize",
    "method_package",
    "min_kept_fraction",
    "removed_per_layer",
    "calibration_effective_samples",
    "calibration_min_class_share",
)


def pruned_record(
    base: Mapping,
    report: Mapping,
    *,
    seed: int,
    method: str,
    ratio: float,
    target: str,
    method_options: Mapping | None,
    samples: int,
    **fields: Any,
) -> dict:
    """The record of a one-shot pruned model: the identity and ``train_epochs`` of the model it was pruned
    from (``base``, its record), the pruning settings, :func:`prune_fields` of ``report`` (a
    ``PruneResult.report``) and ``fields`` (e.g. :func:`metric_fields`); ``details`` holds the resolved
    options and the rest of the report but the scores."""
    details = {k: v for k, v in report.items() if k not in ("scores", "options", "resolved_options")}
    return make_record(
        "pruned",
        **{k: base.get(k) for k in _IDENTITY},
        seed=seed,
        method=method,
        ratio=ratio,
        target=target,
        method_options=method_options,
        method_package=report.get("method_package"),
        samples=samples,
        train_epochs=base.get("train_epochs"),
        finetune_epochs=0,
        **prune_fields(report),
        **fields,
        details={"method_options_resolved": report["resolved_options"], "prune_report": details},
    )


def finetuned_record(pruned: Mapping, *, seed: int, details: Mapping | None = None, **fields: Any) -> dict:
    """The record of a fine-tuned model: the identity, pruning settings, :data:`CARRIED` fields and MACs of
    the pruned model's record (``pruned``; fine-tuning changes no shape), and ``fields`` (``params``,
    ``finetune_epochs``, ``finetune_seconds``, metrics)."""
    return make_record(
        "finetuned",
        tier=pruned["tier"],
        dataset=pruned["dataset"],
        arch=pruned["arch"],
        variant=pruned.get("variant"),
        seed=seed,
        method=pruned.get("method"),
        ratio=pruned.get("ratio"),
        target=pruned.get("target"),
        method_options=pruned.get("method_options"),
        **{k: pruned.get(k) for k in CARRIED},
        macs=pruned.get("macs"),
        details=details,
        **fields,
    )


def measurement_fields(measurement: Mapping) -> dict:
    """Record fields from ``sosp.measure.measure``: counts, then one median/IQR column pair per
    (device type, batch size) latency entry, and the device description of the first entry."""
    fields: dict[str, Any] = {
        k: measurement.get(k) for k in ("params", "macs", "flops", "macs_fvcore") if measurement.get(k) is not None
    }
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
            head = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
            commit = head.stdout.strip() if head.returncode == 0 else None
            if commit:
                dirty = subprocess.run(
                    ["git", "-C", where, "status", "--porcelain", "--", "."], capture_output=True, text=True, timeout=10
                )
                if dirty.returncode == 0 and dirty.stdout.strip():
                    commit += "+dirty"
        except (OSError, subprocess.SubprocessError):
            commit = None
        _GIT[where] = commit
    return _GIT[where]
