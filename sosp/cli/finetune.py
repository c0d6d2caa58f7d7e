"""``sosp finetune``: fine-tune a pruned model and write it with its record."""

from __future__ import annotations

import hashlib
import time

from .args import add_data, add_eval, add_run, add_train_config
from .common import (
    base_record,
    checkpoint_dir,
    data_options,
    drop_checkpoint,
    epoch_logger,
    evaluate,
    load,
    load_data,
    log,
    log_resume,
    quiet,
    save,
    summary,
    train_config,
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a pruned model; write it and its record",
        description="Fine-tune a pruned model and write it with a record (stage finetuned).",
    )
    p.add_argument("--model", required=True, help="pruned model file (from `sosp prune`)")
    p.add_argument("--out", required=True, help="model file to write")
    p.add_argument("--record", required=True, help="JSON record to write")
    add_data(p, required=False)
    add_run(p, "the model's")
    add_train_config(p, "fine-tuning", "no default: give it, or at least --epochs, --batch-size and --lr")
    add_eval(p)


def _file_digest(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cmd_finetune(args) -> None:
    from .. import results, train

    model, meta = load(args.model)
    base = base_record(meta, args)
    data_opts = data_options(args, meta)
    config = train_config(args, None)
    seed = base.get("seed", 0) if args.seed is None else args.seed
    bundle = load_data(data_opts, args.download)
    log(
        f"fine-tuning {base.get('arch')} pruned by {base.get('method')} at ratio {base.get('ratio')}, "
        f"seed {seed}: {config}"
    )
    t0 = time.perf_counter()
    checkpoints = checkpoint_dir(
        args.checkpoint_dir, model=_file_digest(args.model), data=data_opts, seed=seed, config=config.to_dict()
    )
    log_resume(checkpoints)
    history = train.train(
        model,
        bundle,
        config,
        seed=seed,
        checkpoint_dir=checkpoints,
        device=args.device,
        progress=not quiet(),
        log=epoch_logger(config.epochs, "fine-tune"),
    )
    seconds = time.perf_counter() - t0
    fields = evaluate(model, bundle, args)
    record = results.finetuned_record(
        base,
        seed=seed,
        params=sum(p.numel() for p in model.parameters()),
        finetune_epochs=config.epochs,
        finetune_seconds=seconds,
        **fields,
        details={"finetune_config": config.to_dict(), "history": history},
    )
    new_meta = {**meta, "record": summary(record), "data": data_opts}
    save(args.out, model, new_meta, record, args.record)
    drop_checkpoint(checkpoints, args.keep_checkpoint)
