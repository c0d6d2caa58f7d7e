"""``sosp report``: aggregate records into ``runs.csv``, tables and figures (no model files needed); and
the one-shot rows of ``sosp prune --oneshot-out`` into the one-shot curves' table and figure."""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .common import log


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report",
        help="aggregate records into runs.csv, tables and figures",
        description="Aggregate records into OUT_DIR/runs.csv, OUT_DIR/tables/<table>.{md,tex} "
        "and OUT_DIR/figures/<figure>.{png,pdf}; with --oneshot, the one-shot rows into "
        "OUT_DIR/tables/oneshot.{csv,md} and OUT_DIR/figures/oneshot_curves.<format>; needs no model file.",
    )
    p.add_argument(
        "records",
        nargs="*",
        help="record files, or folders searched for *.json, or one runs.csv (not needed with --only oneshot)",
    )
    p.add_argument("--out-dir", required=True, help="folder for runs.csv, tables/ and figures/")
    p.add_argument(
        "--only",
        nargs="+",
        choices=("runs", "tables", "figures", "oneshot"),
        default=("runs", "tables", "figures", "oneshot"),
        help="what to write (default all; oneshot: only with --oneshot)",
    )
    p.add_argument(
        "--tables",
        nargs="*",
        metavar="NAME",
        help="tables to write (default: all of sosp.results.TABLES: summary, paper, timing)",
    )
    p.add_argument("--figures", nargs="*", metavar="NAME", help="figures to draw (default: all registered)")
    p.add_argument(
        "--bottleneck",
        nargs="*",
        default=(),
        metavar="PATH",
        help="analyses of `sosp bottleneck` (files, or folders searched for *.json) for the layer_ratios figure",
    )
    p.add_argument(
        "--oneshot",
        nargs="*",
        default=(),
        metavar="PATH",
        help="one-shot rows of `sosp prune --oneshot-out` (CSV files, or folders searched for *.csv) for the "
        "one-shot curves' table and figure",
    )
    p.add_argument("--formats", nargs="+", default=["png", "pdf"], help="figure formats (default png pdf)")
    p.add_argument(
        "--config-hash",
        metavar="HASH",
        help="fail if a record carries another config_hash (it was made by another config; the workflow "
        "passes its own, sosp.config_hash)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _bottleneck_analyses(paths) -> list[dict]:
    from ..io import read_json
    from ..results import record_paths

    analyses = []
    for path in record_paths(paths or (), what="bottleneck analysis"):
        try:
            analysis = read_json(path)
        except ValueError as exc:
            raise DataError(f"cannot read bottleneck analysis {path}: {exc}") from None
        if not isinstance(analysis, dict) or "by_ratio" not in analysis:
            raise DataError(f"{path} is not an analysis of `sosp bottleneck` (no by_ratio)")
        analyses.append(analysis)
    return analyses


def cmd_report(args) -> None:
    out = Path(args.out_dir)
    wanted = [part for part in ("runs", "tables", "figures") if part in args.only]
    if "oneshot" in args.only and not args.oneshot and not wanted:
        raise DataError("--only oneshot needs --oneshot (the one-shot rows of `sosp prune --oneshot-out`)")
    if wanted and not args.records:
        raise DataError("give the records (files or folders, or one runs.csv), or --only oneshot")
    from .. import results  # matplotlib (plots) only where a figure is drawn

    df = _records(args) if wanted else None
    written = []
    if "runs" in args.only:
        results.write_runs_csv(df, out / "runs.csv")
        written.append(str(out / "runs.csv"))
    if "tables" in args.only:
        written += map(str, results.write_named_tables(df, out / "tables", args.tables or None))
    if "figures" in args.only:
        from .. import plots

        analyses = _bottleneck_analyses(args.bottleneck)
        written += map(str, plots.write_figures(df, out / "figures", args.figures, args.formats, bottleneck=analyses))
    if "oneshot" in args.only and args.oneshot:
        written += map(str, _oneshot(args.oneshot, out, args.formats))
    log(f"{0 if df is None else len(df)} records -> {len(written)} files in {out}")


def _records(args):
    """The records DataFrame of the positional arguments (record files or folders, or one runs.csv)."""
    from .. import results

    if len(args.records) == 1 and args.records[0].endswith(".csv"):
        if not Path(args.records[0]).is_file():
            raise DataError(f"runs file not found: {args.records[0]}")
        return results.read_runs_csv(args.records[0])
    paths = results.record_paths(args.records)
    if not paths:
        raise DataError(f"no records found in {' '.join(args.records)}")
    df = results.collect(paths, config_hash=args.config_hash)
    unchecked = int(df["config_hash"].isna().sum()) if args.config_hash else 0
    if unchecked:
        log(f"warning: {unchecked} of {len(df)} records carry no config_hash (made before it existed): not checked")
    return df


def _oneshot(paths, out: Path, formats) -> list[Path]:
    """The one-shot curves' table (tables/oneshot.{csv,md}) and figure (figures/oneshot_curves.*)."""
    from .. import plots
    from ..plots.oneshot import oneshot_curves
    from ..results.oneshot import oneshot_table, read_oneshot, write_oneshot_tables

    rows = read_oneshot(paths)
    if not len(rows):
        raise DataError(f"no one-shot rows found in {' '.join(map(str, paths))}")
    log(f"{len(rows)} one-shot rows")
    written = write_oneshot_tables(rows, out / "tables")
    return written + plots.save(oneshot_curves(oneshot_table(rows)), out / "figures" / "oneshot_curves", formats)
