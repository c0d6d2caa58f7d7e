"""The one-shot curves' table: the rows of ``sosp prune --oneshot-ratio`` (one CSV per net, seed and
method, columns :data:`sosp.oneshot.COLUMNS`) gathered and averaged over seeds into
``tables/oneshot.csv`` and ``tables/oneshot.md`` (test top-1 and loss before any fine-tuning, with
the BN statistics as they are and re-estimated, per target, method and ratio)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from ..errors import DataError
from ..io import write_atomic
from .records import method_label

#: one row of the table per (these), averaged over seeds
GROUP = ("tier", "dataset", "net", "method", "method_options", "target", "ratio")
#: averaged columns: mean (and, for the metrics, sample standard deviation over seeds)
_MEANS = ("achieved_fraction", "params_removed_pct", "macs_removed_pct", "min_kept_pct")
_METRICS = ("oneshot_top1_pct", "oneshot_loss", "reestimated_top1_pct", "reestimated_loss")
_TARGET_TEXT = {"structures": "structures", "macs": "MACs", "params": "parameters"}


def oneshot_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """CSV files given, and every ``*.csv`` under the folders given, sorted."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(p.rglob("*.csv"))
        elif p.is_file():
            found.append(p)
        else:
            raise DataError(f"one-shot rows not found: {p}")
    return sorted(set(found))


def read_oneshot(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Every one-shot row of the files (and folders) ``paths`` in one DataFrame."""
    from ..oneshot import COLUMNS

    frames = []
    for path in oneshot_paths(paths):
        try:
            frame = pd.read_csv(path, dtype={"method_options": str})
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read one-shot rows {path}: {exc}") from None
        missing = [c for c in ("net", "seed", "method", "target", "ratio", "oneshot_top1_pct") if c not in frame]
        if missing:
            raise DataError(
                f"{path} lacks column(s) {', '.join(missing)}: is it written by `sosp prune --oneshot-out`?"
            )
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=list(COLUMNS))
    df = pd.concat(frames, ignore_index=True)
    df["method_options"] = df["method_options"].fillna("{}")
    for name in ("tier", "dataset"):
        df[name] = df[name].fillna("")
    return df


def oneshot_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per :data:`GROUP`: ``seeds`` (count), the mean of what was removed, and mean and sample
    standard deviation over seeds (``ddof=1``; NaN for one seed) of the one-shot top-1 (percent) and
    loss, as pruned (``oneshot_*``) and with the BN statistics re-estimated (``reestimated_*``; NaN
    where not asked); ``bn_images`` the training images of the re-estimation (0: none)."""
    columns = list(GROUP) + ["seeds", *_MEANS] + [f"{m}_{s}" for m in _METRICS for s in ("mean", "std")]
    if not len(df):
        return pd.DataFrame(columns=columns + ["bn_images"])
    df = df.astype({c: float for c in (*_MEANS, *_METRICS)})
    aggregations = {"seeds": ("seed", "nunique"), **{c: (c, "mean") for c in _MEANS}}
    for m in _METRICS:
        aggregations[f"{m}_mean"] = (m, "mean")
        aggregations[f"{m}_std"] = (m, "std")
    aggregations["bn_images"] = ("bn_images", "max")
    out = df.groupby(list(GROUP), sort=False, dropna=False).agg(**aggregations).reset_index()
    order = out["target"].map({t: i for i, t in enumerate(_TARGET_TEXT)}).fillna(len(_TARGET_TEXT))
    out = out.assign(_order=order).sort_values(["tier", "dataset", "net", "_order", "method", "ratio"], kind="stable")
    return out.drop(columns="_order").reset_index(drop=True)


def _cell(mean: float, std: float, digits: int) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:.{digits}f}" + ("" if pd.isna(std) else f" ± {std:.{digits}f}")


def oneshot_markdown(table: pd.DataFrame, note: str | None = None) -> str:
    """The table as Markdown: one section per (data set, net, target), a row per method and a column per
    ratio holding top-1 (%) as pruned / with BN re-estimated (when asked), then the same for the loss."""
    lines = ["# One-shot accuracy at low pruning ratios (no fine-tuning)", ""]
    reestimated = bool(table["reestimated_top1_pct_mean"].notna().any()) if len(table) else False
    bn_images = int(table["bn_images"].max()) if reestimated else 0
    lines.append(
        note
        or "Test top-1 (%) and loss of every method's one-shot pruned model, before any fine-tuning; mean ± "
        "sample standard deviation over seeds. "
        + (
            f"Each cell: BN statistics as pruning left them / re-estimated on {bn_images} training images."
            if reestimated
            else "BN statistics as pruning left them."
        )
    )
    if not len(table):
        return "\n".join(lines + ["", "No one-shot rows."]) + "\n"
    for (tier, dataset, net, target), part in table.groupby(["tier", "dataset", "net", "target"], sort=False):
        ratios = sorted(part["ratio"].unique())
        seeds = ", ".join(str(n) for n in sorted(part["seeds"].unique()))
        title = f"{dataset} / {net} (tier {tier}): ratio of {_TARGET_TEXT.get(target, target)} removed"
        for metric, what, digits in (("top1_pct", "top-1 (%)", 1), ("loss", "loss (nats)", 3)):
            lines += ["", f"## {title}, {what}, {seeds} seed(s)", ""]
            lines.append("| method | " + " | ".join(f"{r:g}" for r in ratios) + " |")
            lines.append("|---|" + "---:|" * len(ratios))
            for (method, options), rows in part.groupby(["method", "method_options"], sort=False):
                by_ratio = rows.set_index("ratio")
                cells = []
                for r in ratios:
                    if r not in by_ratio.index:
                        cells.append("–")
                        continue
                    row = by_ratio.loc[r]
                    cell = _cell(row[f"oneshot_{metric}_mean"], row[f"oneshot_{metric}_std"], digits)
                    if reestimated:
                        cell += " / " + _cell(
                            row[f"reestimated_{metric}_mean"], row[f"reestimated_{metric}_std"], digits
                        )
                    cells.append(cell)
                lines.append(f"| {method_label(method, options)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_oneshot_tables(df: pd.DataFrame, out_dir: str | os.PathLike) -> list[Path]:
    """``out_dir/oneshot.csv`` (:func:`oneshot_table`) and ``out_dir/oneshot.md``; returns the paths."""
    table = oneshot_table(df)
    csv_path, md_path = Path(out_dir) / "oneshot.csv", Path(out_dir) / "oneshot.md"
    write_atomic(csv_path, lambda tmp: table.to_csv(tmp, index=False, float_format="%.6g"))
    text = oneshot_markdown(table)
    write_atomic(md_path, lambda tmp: tmp.write_text(text))
    return [csv_path, md_path]
