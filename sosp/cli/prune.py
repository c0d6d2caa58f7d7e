"""``sosp prune``: score structures once on calibration data, prune one-shot to one or more ratios of
one or more targets, and write each pruned model with its record (one-shot test metrics included);
optionally, the one-shot curve at further ratios (``--oneshot-ratio``: test top-1 and loss, with the BN
statistics as they are and re-estimated, one CSV row per target and ratio, no model files)."""

from __future__ import annotations

import argparse

from ..errors import ConfigError, check_non_negative_int
from ..oneshot import BN_MODES, DEFAULT_BN_IMAGES
from .args import add_data, add_eval, add_run, fraction, key_text, positive_int, ratio
from .common import base_record, data_options, evaluate, load, load_data, log, save, summary


def _methods_help() -> str:
    from .. import registry  # when the help is shown: describing the methods imports them (and torch)

    return registry.describe()


def add_parser(sub) -> None:
    p = sub.add_parser(
        "prune",
        help="score and prune a model once; write it and its record",
        description="Score structures on calibration data (by default the training split, no augmentation),\n"
        "prune, evaluate the one-shot pruned model, write it and its record.",
        epilog=_methods_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model file to prune (from `sosp train`)")
    p.add_argument("--method", required=True, help="pruning method: any installed method (sosp.registry; listed below)")
    p.add_argument(
        "--ratio",
        required=True,
        type=ratio,
        nargs="+",
        help="pruning ratio(s) in [0, 1); the saliencies are computed once and each (target, ratio) gets "
        "its own --out/--record",
    )
    p.add_argument(
        "--target",
        default=["structures"],
        nargs="+",
        choices=("structures", "macs", "params"),
        help="what the ratios count (default structures); with several, every target is pruned to every "
        "ratio from the same saliencies, and --out/--record run over the targets, then the ratios (for "
        "--target structures macs --ratio 0.3 0.5: structures 0.3, structures 0.5, macs 0.3, macs 0.5)",
    )
    p.add_argument("--min-channels", type=positive_int, default=1, help="channels kept per group (default 1)")
    p.add_argument(
        "--min-fraction",
        type=fraction,
        default=0.0,
        help="fraction of each group's channels kept at least (default 0; EigenDamage and C-OBD "
        "keep at least 0.05, their authors' floor)",
    )
    p.add_argument(
        "--normalize",
        default="none",
        choices=("none", "cost"),
        help="divide saliencies by the MACs they free (default none; applied only to methods "
        "whose scores are on a global scale: not random, layer-wise magnitude or EigenDamage)",
    )
    p.add_argument(
        "--option",
        type=key_text,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method option (repeatable), e.g. combine=joint; checked against the method's "
        "declared options (listed below)",
    )
    p.add_argument(
        "--samples", type=positive_int, default=1024, help="calibration samples used for scoring (default 1024)"
    )
    p.add_argument("--score-batch-size", type=positive_int, default=128, help="batch size for scoring (default 128)")
    p.add_argument(
        "--calibration-split",
        choices=("train", "val"),
        default="train",
        help="split the calibration samples are drawn from (default train; val: the validation split carved "
        "from the training set, images the base model was not fitted on)",
    )
    p.add_argument(
        "--calibration-augment",
        action="store_true",
        help="apply the training augmentation (random crops/flips of the data set, drawn from the run's seed) "
        "to the calibration images: a base model fits them less perfectly, so more samples carry the scores",
    )
    p.add_argument(
        "--warmup-batches",
        type=int,
        default=1,
        metavar="N",
        help="untimed scoring passes on N calibration batches before the timed one (channel-saliency "
        "methods; default 1)",
    )
    p.add_argument("--out", required=True, nargs="+", help="pruned model file(s) to write, one per target and ratio")
    p.add_argument("--record", required=True, nargs="+", help="JSON record(s) to write, one per target and ratio")
    g = p.add_argument_group("one-shot curve (no model files, no fine-tuning)")
    g.add_argument(
        "--oneshot-ratio",
        type=ratio,
        nargs="+",
        default=[],
        metavar="R",
        help="also prune to these ratios of every --target from the same saliencies and evaluate each "
        "one-shot on --eval-split (top-1 and loss), one row each in --oneshot-out",
    )
    g.add_argument("--oneshot-out", metavar="CSV", help="CSV file of the one-shot rows (with --oneshot-ratio)")
    g.add_argument(
        "--oneshot-bn",
        nargs="+",
        choices=BN_MODES,
        default=["as_is"],
        help="BatchNorm statistics of the one-shot evaluation: as_is (as pruning left them) and/or "
        "reestimated (re-estimated on --oneshot-bn-images training images; default as_is)",
    )
    g.add_argument(
        "--oneshot-bn-images",
        type=positive_int,
        default=DEFAULT_BN_IMAGES,
        metavar="N",
        help=f"training images for the BN re-estimation (no augmentation, shuffled with the seed; default "
        f"{DEFAULT_BN_IMAGES})",
    )
    add_data(p, required=False)
    add_run(p, "the model's")
    add_eval(p)


def cmd_prune(args) -> None:
    check_non_negative_int("--warmup-batches", args.warmup_batches)  # before anything is imported or loaded
    targets = args.target
    if len(set(targets)) < len(targets) or len(set(args.ratio)) < len(args.ratio):
        raise ConfigError("name each --target and each --ratio once")
    main = [(target, r) for target in targets for r in args.ratio]
    if not len(main) == len(args.out) == len(args.record):
        raise ConfigError(
            f"give one --out and one --record per --ratio and --target: {len(targets)} target(s) x "
            f"{len(args.ratio)} ratio(s), {len(args.out)} --out, {len(args.record)} --record"
        )
    if bool(args.oneshot_ratio) != bool(args.oneshot_out):
        raise ConfigError("give --oneshot-ratio and --oneshot-out together")
    import torch

    from .. import data, oneshot, registry, results, runner

    model, meta = load(args.model)
    base = base_record(meta, args)
    data_opts = data_options(args, meta)
    seed = base.get("seed", 0) if args.seed is None else args.seed
    method = registry.get(args.method)  # an unknown method or option fails before the data is loaded
    options = method.parse(args.option)
    bundle = load_data(data_opts, args.download)
    example = bundle.example_input[:1].to(args.device)
    model.to(args.device)

    split = getattr(bundle, args.calibration_split)

    def calibration():  # the same samples (and augmentation draws) at every call
        return data.batches(
            split,
            args.score_batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
            augment=bundle.augment if args.calibration_augment else None,
            device=args.device,
        )

    # every (target, ratio) to prune to: the models to write, then the one-shot curve's other ratios
    curve = [(target, r) for target in targets for r in args.oneshot_ratio]
    points = main + [p for p in dict.fromkeys(curve) if p not in main]
    outputs = {p: (out, record) for p, out, record in zip(main, args.out, args.record)}
    log(
        f"pruning with {args.method} to ratio(s) {', '.join(map(str, args.ratio))} of {', '.join(targets)} "
        + (f"(one-shot curve at {', '.join(map(str, args.oneshot_ratio))}) " if curve else "")
        + f"({args.samples} calibration samples of the {args.calibration_split} split"
        f"{', augmented' if args.calibration_augment else ''}, options {options or 'default'})"
    )
    runs = runner.run_points(
        method,
        model,
        calibration,
        points,
        example_input=example,
        min_channels=args.min_channels,
        min_fraction=args.min_fraction,
        normalize=args.normalize,
        num_samples=args.samples,
        seed=seed,
        warmup_batches=args.warmup_batches,
        log=log,
        **options,
    )
    samples = min(args.samples, len(split))
    rows = []
    for (target, requested), result in zip(points, runs):  # one pruned copy in memory at a time
        report = result.report
        report.update(calibration_split=args.calibration_split, calibration_augment=args.calibration_augment)
        log(
            f"{target} {requested}: removed {100 * report['achieved_fraction']:.1f}% of structures: params "
            f"{report['params_before']:,} -> {report['params_after']:,}, MACs {report['macs_before']:,} -> "
            f"{report['macs_after']:,} ({report['prune_seconds']:.1f} s)"
        )
        if (target, requested) in outputs:
            out, record_path = outputs[(target, requested)]
            record = results.pruned_record(
                base,
                report,
                seed=seed,
                method=args.method,
                ratio=requested,
                target=target,
                method_options=options,
                samples=samples,
                **evaluate(result.model, bundle, args),
            )
            new_meta = {
                **meta,
                "record": summary(record),
                "data": data_opts,
                "removed": result.removed,
                "scores": report.get("scores"),
            }
            save(out, result.model, new_meta, record, record_path)
        if requested in args.oneshot_ratio:
            metrics = oneshot.evaluate(
                result.model,
                bundle,
                modes=args.oneshot_bn,
                bn_images=args.oneshot_bn_images,
                seed=seed,
                split=args.eval_split,
                batch_size=args.eval_batch_size,
                device=args.device,
            )
            log(f"{target} {requested} one-shot: " + _oneshot_text(metrics))
            identity = {
                "tier": base.get("tier"),
                "dataset": base.get("dataset"),
                "net": _net(base),
                "seed": seed,
                "method": args.method,
                "method_options": results.canonical_options(options),
                "target": target,
                "ratio": requested,
                "samples": samples,
                "split": args.eval_split,
                **_base_metrics(base, args.eval_split),
            }
            rows.append(oneshot.row(report, metrics, **identity))
    if args.oneshot_out:
        oneshot.write_rows(args.oneshot_out, rows)
        log(f"wrote {len(rows)} one-shot rows to {args.oneshot_out}")


def _base_metrics(base: dict, split: str) -> dict:
    """The unpruned model's top-1 (percent) and loss on ``split``, from its record (None if it has none)."""
    same = base.get("eval_split") == split and base.get("top1") is not None
    return {"base_top1_pct": 100 * base["top1"] if same else None, "base_loss": base.get("loss") if same else None}


def _net(record: dict) -> str:
    """The net of a record: its architecture, with ``+<variant>`` for a widened one."""
    arch, variant = record.get("arch"), record.get("variant")
    return arch if variant in (None, "original") else f"{arch}+{str(variant).split('-')[0]}"


def _oneshot_text(metrics: dict) -> str:
    parts = []
    if metrics["oneshot_top1_pct"] is not None:
        parts.append(f"top1 {metrics['oneshot_top1_pct']:.2f}%  loss {metrics['oneshot_loss']:.4f}")
    if metrics["reestimated_top1_pct"] is not None:
        parts.append(
            f"BN re-estimated on {metrics['bn_images']} images: top1 {metrics['reestimated_top1_pct']:.2f}%  "
            f"loss {metrics['reestimated_loss']:.4f}"
        )
    return "; ".join(parts)
