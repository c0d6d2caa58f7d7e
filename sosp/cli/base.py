"""``sosp base``: a base model from weights instead of training (published torchvision/timm weights or a
checkpoint file), evaluated and written with its record, like ``sosp train`` writes a trained one."""

from __future__ import annotations

import time

from .args import add_data, add_eval, add_run, key_value
from .common import data_options, evaluate, load_data, log, model_meta, quiet, save
from .weights import add_weights_cache


def add_parser(sub) -> None:
    p = sub.add_parser(
        "base",
        help="build a base model from weights (published or a file); write it and its record",
        description="Build architecture --arch with the weights --weights (checked to fit it exactly), "
        "evaluate it and write it with a record (stage base) whose details.weights_source says where "
        "the weights came from. Published weights are read from the cache (`sosp weights` fetches "
        "them once); nothing is downloaded unless --fetch.",
    )
    p.add_argument("--arch", required=True, help="model name (torchvision:resnet18, timm:resnet18, resnet20, ...)")
    p.add_argument(
        "--arch-option",
        type=key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model option (repeatable), e.g. shortcut=B",
    )
    p.add_argument(
        "--weights",
        required=True,
        metavar="SPEC",
        help="torchvision:<Enum>.<NAME> (e.g. torchvision:ResNet18_Weights.IMAGENET1K_V1), "
        "timm:<model>.<tag> (e.g. timm:resnet18.a1_in1k), or file:<path> (a state dict, a checkpoint "
        "holding one under 'state_dict' or 'model', a saved nn.Module, or a sosp model file)",
    )
    add_weights_cache(p)
    p.add_argument("--fetch", action="store_true", help="download published weights that are not cached yet")
    p.add_argument("--out", required=True, help="model file to write")
    p.add_argument("--record", required=True, help="JSON record to write")
    add_data(p, required=True)
    add_run(p)
    add_eval(p)


def cmd_base(args) -> None:
    from .. import results, train, weights

    data_opts = data_options(args)
    weights.parse(args.weights)  # a malformed spec fails before the data set is read
    bundle = load_data(data_opts, args.download)
    seed = 0 if args.seed is None else args.seed
    train.seed_everything(seed)
    arch_options = dict(args.arch_option)
    log(f"building {args.arch} from weights {args.weights}")
    t0 = time.perf_counter()
    model, source = weights.load(
        args.arch,
        args.weights,
        num_classes=bundle.num_classes,
        in_channels=bundle.in_channels,
        arch_options=arch_options,
        cache_dir=args.weights_cache,
        download=args.fetch,
        progress=not quiet(),
    )
    params = sum(p.numel() for p in model.parameters())
    log(
        f"{args.arch} ({params:,} params) from {source['spec']}: {source['file_name']} "
        f"(sha256 {str(source['sha256'])[:12]}...) in {time.perf_counter() - t0:.1f} s"
    )
    fields = evaluate(model, bundle, args)
    details = {"weights_source": source, "arch_options": arch_options}
    record = results.make_record(
        "base",
        tier=args.tier or "adhoc",
        dataset=data_opts["name"],
        arch=args.arch,
        seed=seed,
        params=params,
        **fields,
        details=details,
    )
    meta = model_meta(record, data_opts, args.arch, arch_options, bundle, weights_source=source)
    save(args.out, model, meta, record, args.record)
