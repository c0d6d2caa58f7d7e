"""``sosp report``: aggregate records into ``runs.csv``, tables and figures (no model files needed)."""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .common import log


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report",
        help="aggregate records into runs.csv, tables and figures",
        description="Aggregate records into OUT_DIR/runs.csv, OUT_DIR/tables/<table>.{md,tex} "
        "and OUT_DIR/figures/<figure>.{png,pdf}; needs no model file.",
    )
    p.add_argument("records", nargs="+", help="record files, or folders searched for *.json, or one runs.csv")
    p.add_argument("--out-dir", required=True, help="folder for runs.csv, tables/ and figures/")
    p.add_argument(
        "--only",
        nargs="+",
        choices=("runs", "tables", "figures"),
        default=("runs", "tables", "figures"),
        help="what to write (default all three)",
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
    from .. import plots, results

    out = Path(args.out_dir)
    if len(args.records) == 1 and args.records[0].endswith(".csv"):
        if not Path(args.records[0]).is_file():
            raise DataError(f"runs file not found: {args.records[0]}")
        df = results.read_runs_csv(args.records[0])
    else:
        paths = results.record_paths(args.records)
        if not paths:
            raise DataError(f"no records found in {' '.join(args.records)}")
        df = results.collect(paths, config_hash=args.config_hash)
        unchecked = int(df["config_hash"].isna().sum()) if args.config_hash else 0
        if unchecked:
            log(f"warning: {unchecked} of {len(df)} records carry no config_hash (made before it existed): not checked")
    written = []
    if "runs" in args.only:
        results.write_runs_csv(df, out / "runs.csv")
        written.append(str(out / "runs.csv"))
    if "tables" in args.only:
        written += map(str, results.write_named_tables(df, out / "tables", args.tables or None))
    if "figures" in args.only:
        analyses = _bottleneck_analyses(args.bottleneck)
        written += map(str, plots.write_figures(df, out / "figures", args.figures, args.formats, bottleneck=analyses))
    log(f"{len(df)} records -> {len(written)} files in {out}")
