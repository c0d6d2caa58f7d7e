"""Collecting records: every JSON record under the given paths into one tidy DataFrame (one row per
record, columns in canonical order), and ``runs.csv`` written from / read back into it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DataError
from ..io import read_json, write_atomic
from .records import (
    _INTEGER_COLUMNS,
    _LATENCY,
    COLUMNS,
    NO_METHOD,
    ORIGINAL,
    STAGES,
    _latency_order,
    canonical_options,
    prune_fields,
)

if TYPE_CHECKING:
    import pandas as pd  # imported where used: reading one record needs no pandas


def record_paths(paths: Iterable[str | os.PathLike], what: str = "record file") -> list[Path]:
    """Files as given, and every ``*.json`` below each directory given (not the hidden temporary files
    of an unfinished write); sorted, no duplicates. The one walk of a records (or analyses) folder."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            found.update(q for q in p.rglob("*.json") if not q.name.startswith("."))
        elif p.exists():
            found.add(p)
        else:
            raise DataError(f"{what} not found: {p}")
    return sorted(found)


def read_record(path: str | os.PathLike, tier: str | None = None) -> dict:
    """One record file, checked (a JSON object with the identity fields and a known stage); ``tier``,
    if given, replaces its tier. The one reader of records, for the verbs and for :func:`collect`."""
    if not Path(path).is_file():
        raise DataError(f"record file not found: {path}")
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
    if tier:
        record["tier"] = tier
    return record


def check_config_hash(records: Iterable[tuple[os.PathLike | str, Mapping]], expected: str) -> int:
    """Raise ``DataError`` if a record carries a ``config_hash`` other than ``expected`` (it was made by
    another config than the one given); return how many carry none (made before the field existed,
    or outside the workflow: not checked)."""
    other, unchecked, total = [], 0, 0
    for path, record in records:
        total += 1
        found = record.get("config_hash")
        if found is None:
            unchecked += 1
        elif found != expected:
            other.append((path, found))
    if other:
        path, found = other[0]
        raise DataError(
            f"{len(other)} of {total} records were made by a different config (e.g. {path} has config_hash "
            f"{found}; the config gives {expected}): rerun the workflow for this tier, or restore the config "
            "the records were made with (config_hash covers the keys listed in sosp/config_hash.py)"
        )
    return unchecked


def _with_layer_fields(record: dict) -> dict:
    """Records written before ``removed_per_layer``/``min_kept_fraction`` existed get them from their
    own ``details.prune_report`` (the same counts)."""
    report = (record.get("details") or {}).get("prune_report")
    if record.get("removed_per_layer") is None and report:
        fields = prune_fields(report)
        record = {**record, **{k: fields[k] for k in ("removed_per_layer", "min_kept_fraction")}}
    return record


def collect(paths: Iterable[str | os.PathLike], config_hash: str | None = None) -> pd.DataFrame:
    """One row per record (files, or directories searched for ``*.json``), columns in canonical
    order (latency columns after the known ones), ``details`` dropped; sorted by the key columns.
    With ``config_hash``, :func:`check_config_hash` first (records of another config are an error)."""
    records = [(path, read_record(path)) for path in record_paths(paths)]
    if config_hash is not None:
        check_config_hash(records, config_hash)
    rows = []
    for _, record in records:
        record = _with_layer_fields(record)
        rows.append(
            {
                k: (json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v)
                for k, v in record.items()
                if k != "details"
            }
        )
    import pandas as pd

    return tidy(pd.DataFrame(rows))


def tidy(df: pd.DataFrame) -> pd.DataFrame:
    """Canonical column order, defaults for missing key columns, stable sort."""
    import pandas as pd

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
    for name in (
        "top1",
        "top5",
        "loss",
        "achieved_fraction",
        "min_fraction",
        "min_kept_fraction",
        "saliency_seconds",
        "selection_seconds",
        "prune_seconds",
        "train_seconds",
        "finetune_seconds",
    ):
        df[name] = pd.to_numeric(df[name]).astype(float)
    latency = sorted((c for c in df.columns if _LATENCY.match(c)), key=_latency_order)
    extra = sorted(c for c in df.columns if c not in COLUMNS and c not in latency)
    df = df[list(COLUMNS) + latency + extra]
    if len(df):
        order = df["stage"].map({s: i for i, s in enumerate(STAGES)})
        df = (
            df.assign(_stage=order, _variant=df["variant"] != ORIGINAL)
            .sort_values(
                [
                    "tier",
                    "dataset",
                    "arch",
                    "_variant",
                    "variant",
                    "method",
                    "method_options",
                    "target",
                    "ratio",
                    "_stage",
                    "seed",
                ],
                kind="stable",
            )
            .drop(columns=["_stage", "_variant"])
            .reset_index(drop=True)
        )
    return df


def write_runs_csv(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """``runs.csv``: one row per record, written atomically."""
    write_atomic(path, lambda tmp: df.to_csv(tmp, index=False))


def read_runs_csv(path: str | os.PathLike) -> pd.DataFrame:
    """``runs.csv`` back as the records DataFrame (the inverse of :func:`write_runs_csv`)."""
    import pandas as pd

    try:
        df = pd.read_csv(path, dtype={"method_options": str})
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    missing = [k for k in ("tier", "dataset", "arch", "seed", "stage") if k not in df.columns]
    if missing:
        raise DataError(f"{path} lacks column(s) {', '.join(missing)}: is it a runs.csv?")
    return tidy(df)
