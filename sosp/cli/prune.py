"""``sosp prune``: score structures once on calibration data, prune one-shot at one or more ratios, and
write each pruned model with its record (one-shot test metrics included)."""

from __future__ import annotations

import argparse

from ..errors import ConfigError, check_non_negative_int
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
        help="pruning ratio(s) in [0, 1); with several, the saliencies are computed once and "
        "each ratio gets its own --out/--record (in the same order)",
    )
    p.add_argument(
        "--target",
        default="structures",
        choices=("structures", "macs", "params"),
        help="what the ratio counts (default structures)",
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
    p.add_argument("--out", required=True, nargs="+", help="pruned model file(s) to write, one per ratio")
    p.add_argument("--record", required=True, nargs="+", help="JSON record(s) to write, one per ratio")
    add_data(p, required=False)
    add_run(p, "the model's")
    add_eval(p)


def cmd_prune(args) -> None:
    import torch

    from .. import data, registry, results, runner

    check_non_negative_int("--warmup-batches", args.warmup_batches)  # before the data is loaded
    if not len(args.ratio) == len(args.out) == len(args.record):
        raise ConfigError(
            f"give one --out and one --record per --ratio: {len(args.ratio)} ratio(s), "
            f"{len(args.out)} --out, {len(args.record)} --record"
        )
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

    log(
        f"pruning with {args.method} to ratio(s) {', '.join(map(str, args.ratio))} of {args.target} "
        f"({args.samples} calibration samples of the {args.calibration_split} split"
        f"{', augmented' if args.calibration_augment else ''}, options {options or 'default'})"
    )
    runs = runner.run_ratios(
        method,
        model,
        calibration,
        args.ratio,
        example_input=example,
        target=args.target,
        min_channels=args.min_channels,
        min_fraction=args.min_fraction,
        normalize=args.normalize,
        num_samples=args.samples,
        seed=seed,
        warmup_batches=args.warmup_batches,
        log=log,
        **options,
    )
    for requested, result, out, record_path in zip(args.ratio, runs, args.out, args.record):
        report = result.report
        report.update(calibration_split=args.calibration_split, calibration_augment=args.calibration_augment)
        log(
            f"ratio {requested}: removed {100 * report['achieved_fraction']:.1f}% of structures: params "
            f"{report['params_before']:,} -> {report['params_after']:,}, MACs {report['macs_before']:,} -> "
            f"{report['macs_after']:,} ({report['prune_seconds']:.1f} s)"
        )
        record = results.pruned_record(
            base,
            report,
            seed=seed,
            method=args.method,
            ratio=requested,
            target=args.target,
            method_options=options,
            samples=min(args.samples, len(split)),
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
