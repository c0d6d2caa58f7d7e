"""``sosp bottleneck``: layer-wise pruning ratios of pruned records -> bottlenecks -> the widths of the
widened networks (one JSON analysis for ``sosp train --widths``)."""

from __future__ import annotations

from ..errors import DataError
from .args import ratio
from .common import load, log


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bottleneck",
        help="layer-wise pruning ratios -> bottlenecks -> widened widths",
        description="From pruned records (details.prune_report of `sosp prune`, e.g. SOSP-H at "
        "several ratios and seeds): the fraction of each layer's (width key's) and "
        "block's channels removed, the bottlenecks (lowest ratios at --ratio, mean "
        "over seeds), and the widths of the bottleneck-widened and the uniformly "
        "widened networks; one JSON analysis for `sosp train --widths`.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="a model file of the pruned architecture (e.g. its base model; only its width keys are used)",
    )
    p.add_argument(
        "--report", required=True, nargs="+", help="pruned record files (or folders searched for *.json) of one method"
    )
    p.add_argument(
        "--ratio",
        type=ratio,
        help="pruning ratio whose layer-wise ratios choose the bottlenecks "
        "(default: the median of the records' ratios)",
    )
    p.add_argument(
        "--selection",
        choices=("fraction", "threshold"),
        default="fraction",
        help="fraction: the lowest --value fraction of layers; threshold: every layer pruned by "
        "at most --value (default fraction)",
    )
    p.add_argument("--value", type=float, default=0.25, help="fraction or threshold (default 0.25)")
    p.add_argument(
        "--level",
        choices=("layer", "block"),
        default="layer",
        help="widen the chosen layers, or every layer of the chosen blocks (default layer)",
    )
    p.add_argument("--factor", type=float, default=2.0, help="widening factor of the bottlenecks (default 2)")
    p.add_argument(
        "--uniform-factor",
        type=float,
        default=1.1,
        help="widening factor of every layer of the uniform baseline (default 1.1)",
    )
    p.add_argument("--out", required=True, help="JSON analysis to write")
    p.add_argument("--tier", help="tier name stored in the analysis (default: the records')")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def cmd_bottleneck(args) -> None:
    from .. import bottleneck, results
    from ..io import write_json

    model, meta = load(args.model)
    paths = results.record_paths(args.report)
    if not paths:
        raise DataError(f"no records found in {' '.join(args.report)}")
    records = [results.read_record(p) for p in paths]
    analysis = bottleneck.analyse(
        model,
        meta,
        records,
        ratio=args.ratio,
        selection=args.selection,
        value=args.value,
        level=args.level,
        factor=args.factor,
        uniform_factor=args.uniform_factor,
        tier=args.tier,
        record_names=[str(p) for p in paths],
    )
    write_json(args.out, analysis)
    keys, mean = analysis["bottlenecks"], analysis["layer_ratios"]
    sizes = (
        analysis["params"],
        analysis["variants"]["bottleneck"]["params"],
        analysis["variants"]["uniform"]["params"],
    )
    log(
        f"bottlenecks of {analysis['arch']} at ratio {analysis['ratio']} ({args.selection} {args.value}, "
        f"{args.level}s): "
        + ", ".join(f"{k} ({100 * mean[k]:.0f}% removed)" for k in keys)
        + (f"; params {sizes[0]:,} -> bottleneck-widened {sizes[1]:,}, uniform {sizes[2]:,}" if all(sizes) else "")
        + f"; wrote {args.out}"
    )
