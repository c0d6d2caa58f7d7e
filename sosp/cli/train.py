"""``sosp train``: train a model from scratch (the base network, or a widened one of the bottleneck
study) and write it with its record."""

from __future__ import annotations

from .args import add_data, add_eval, add_run, add_train_config, key_value, load_mapping
from .common import (
    checkpoint_dir,
    data_options,
    data_parallel,
    drop_checkpoint,
    load_data,
    log,
    model_meta,
    train_and_save,
    train_config,
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model from scratch; write it and its record",
        description="Train a model from scratch and write it with a record (stage base).",
    )
    p.add_argument("--arch", required=True, help="model name (resnet20, vgg11, torchvision:resnet18, ...)")
    p.add_argument(
        "--arch-option",
        type=key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model option (repeatable), e.g. shortcut=B",
    )
    p.add_argument(
        "--stage",
        choices=("base", "widened"),
        help="stage in the record (default: widened with --widths/--width-multiplier, else base)",
    )
    g = p.add_argument_group("widths (CIFAR ResNet/VGG; the bottleneck study)")
    g.add_argument(
        "--widths",
        metavar="JSON|FILE",
        help="channels per width key, as a JSON object or file: either {key: channels} or an "
        "analysis of `sosp bottleneck` (then --variant picks its variant)",
    )
    g.add_argument(
        "--width-multiplier",
        type=float,
        metavar="X",
        help="scale every width by X (e.g. 1.1: the uniformly widened baseline)",
    )
    g.add_argument(
        "--variant",
        help="variant name: with an analysis file, which of its variants "
        "(bottleneck, uniform); else the label recorded in `variant` (default 'custom', or "
        "'uniform-x<X>' with --width-multiplier)",
    )
    p.add_argument("--out", required=True, help="model file to write")
    p.add_argument("--record", required=True, help="JSON record to write")
    add_data(p, required=True)
    add_run(p)
    add_train_config(p, "training", "default for digits: sosp.train.DEFAULT_DIGITS_CONFIG")
    add_eval(p)


def _widths(args) -> tuple[dict, str]:
    """Model options and variant label from --widths / --width-multiplier / --variant."""
    from .. import bottleneck

    spec = load_mapping(args.widths, "--widths") if args.widths else None
    return bottleneck.width_options(
        spec, arch=args.arch, variant=args.variant, width_multiplier=args.width_multiplier, source=args.widths
    )


def cmd_train(args) -> None:
    data_parallel(args, _train)  # --nproc N: N workers, rank 0 writes


def _train(args) -> None:
    from .. import models, results, train

    data_opts = data_options(args)
    config = train_config(args, train.DEFAULT_DIGITS_CONFIG.to_dict() if data_opts["name"] == "digits" else None)
    width_options, variant = _widths(args)
    arch_options = {**dict(args.arch_option), **width_options}
    stage = args.stage or ("base" if variant == results.ORIGINAL else "widened")
    bundle = load_data(data_opts, args.download)
    seed = 0 if args.seed is None else args.seed
    train.seed_everything(seed)
    model = models.create(args.arch, num_classes=bundle.num_classes, in_channels=bundle.in_channels, **arch_options)
    params = sum(p.numel() for p in model.parameters())
    log(
        f"training {args.arch}{'' if variant == results.ORIGINAL else f' ({variant})'} ({params:,} params), "
        f"seed {seed}: {config}"
    )
    checkpoints = checkpoint_dir(
        args.checkpoint_dir,
        arch=args.arch,
        arch_options=arch_options,
        data=data_opts,
        seed=seed,
        config=config.to_dict(),
    )

    def build(history: dict, seconds: float, fields: dict, reused: bool) -> tuple[dict, dict]:
        details = {"train_config": config.to_dict(), "arch_options": arch_options, "history": history}
        if hasattr(model, "width_spec"):
            details["widths"] = model.width_spec()
        record = results.make_record(
            stage,
            tier=args.tier or "adhoc",
            dataset=data_opts["name"],
            arch=args.arch,
            variant=variant,
            seed=seed,
            params=params,
            train_epochs=config.epochs,
            train_seconds=seconds,
            **fields,
            details=details,
        )
        meta = model_meta(record, data_opts, args.arch, arch_options, bundle, train_config=config.to_dict())
        return record, meta

    train_and_save(
        model,
        bundle,
        config,
        args,
        seed=seed,
        checkpoints=checkpoints,
        what="train",
        out=args.out,
        record_path=args.record,
        build=build,
    )
    drop_checkpoint(checkpoints, args.keep_checkpoint)
