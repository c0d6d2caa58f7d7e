"""``sosp finetune``: fine-tune one or more pruned models and write each with its record.

Several models in one call pay the start-up, the imports and the data loading once (the workflow
fine-tunes every ratio and target of one (net, seed, method) in one job); each model is fine-tuned on
its own, with its own seed, checkpoint and record, exactly as in a call of its own."""

from __future__ import annotations

import json

from ..errors import ConfigError
from .args import add_data, add_eval, add_run, add_train_config
from .common import (
    base_record,
    checkpoint_dir,
    data_options,
    data_parallel,
    drop_checkpoint,
    load,
    load_data,
    log,
    summary,
    train_and_save,
    train_config,
    weights_digest,
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune pruned models; write each and its record",
        description="Fine-tune pruned models and write each with a record (stage finetuned). Several "
        "--model (with one --out and one --record each, in the same order) share one process and one "
        "data loading. With --checkpoint-dir, an interrupted call resumes: every model that had finished "
        "is written again without training, the one that was running resumes from its last epoch; with "
        "--keep-checkpoint as well (the workflow), every finished fine-tuning stays there (a hard link to its "
        "--out: no extra disk while that exists), so a later call with a model of the same weights, data, "
        "recipe and seed reuses it instead of training again.",
    )
    p.add_argument("--model", required=True, nargs="+", help="pruned model file(s) (from `sosp prune`)")
    p.add_argument("--out", required=True, nargs="+", help="model file(s) to write, one per --model")
    p.add_argument("--record", required=True, nargs="+", help="JSON record(s) to write, one per --model")
    add_data(p, required=False)
    add_run(p, "the model's")
    add_train_config(p, "fine-tuning", "no default: give it, or at least --epochs, --batch-size and --lr")
    add_eval(p)


def cmd_finetune(args) -> None:
    data_parallel(args, _finetune)  # --nproc N: N workers, rank 0 writes


def _finetune(args) -> None:
    from .. import results

    if not len(args.model) == len(args.out) == len(args.record):
        raise ConfigError(
            f"give one --out and one --record per --model: {len(args.model)} model(s), "
            f"{len(args.out)} --out, {len(args.record)} --record"
        )
    config = train_config(args, None)
    bundles: dict[str, object] = {}  # data options -> data set, loaded once
    folders = []
    for i, (model_path, out, record_path) in enumerate(zip(args.model, args.out, args.record), 1):
        model, meta = load(model_path)
        base = base_record(meta, args)
        data_opts = data_options(args, meta)
        key = json.dumps(data_opts, sort_keys=True, default=str)
        if key not in bundles:
            bundles[key] = load_data(data_opts, args.download)
        bundle = bundles[key]
        seed = base.get("seed", 0) if args.seed is None else args.seed
        log(
            f"[{i}/{len(args.model)}] fine-tuning {base.get('arch')} pruned by {base.get('method')} to "
            f"{base.get('ratio')} of its {base.get('target')}, seed {seed}: {config}"
        )
        # keyed by the pruned weights, not the file: a re-pruned model that came out the same (its file
        # differs in timings only) reuses the fine-tuning kept for it
        checkpoints = checkpoint_dir(
            args.checkpoint_dir, model=weights_digest(model), data=data_opts, seed=seed, config=config.to_dict()
        )
        folders.append(checkpoints)
        params = sum(p.numel() for p in model.parameters())  # fine-tuning changes no shape

        def build(
            history, seconds, fields, reused, base=base, meta=meta, data_opts=data_opts, seed=seed, params=params
        ):
            details = {"finetune_config": config.to_dict(), "history": history}
            if reused:
                details["finetune_reused"] = True
            record = results.finetuned_record(
                base,
                seed=seed,
                params=params,
                finetune_epochs=config.epochs,
                finetune_seconds=seconds,
                **fields,
                details=details,
            )
            return record, {**meta, "record": summary(record), "data": data_opts}

        train_and_save(
            model,
            bundle,
            config,
            args,
            seed=seed,
            checkpoints=checkpoints,
            what="fine-tune",
            out=out,
            record_path=record_path,
            build=build,
            reuse=True,
        )
    for folder in dict.fromkeys(folders):  # every model is done: the resume points are no longer needed
        drop_checkpoint(folder, args.keep_checkpoint)
