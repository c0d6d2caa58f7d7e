"""``sosp evaluate``: add a model's top-1/top-5/loss to a record."""

from __future__ import annotations

from .args import add_data, add_eval, add_run
from .common import data_options, evaluate, input_record, load, load_data, log


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="add top1/top5/loss of a model to a record",
        description="Evaluate a model and write a record with its top1/top5/loss.",
    )
    p.add_argument("--model", required=True, help="model file")
    p.add_argument("--record", help="record to update (default: the record stored with the model)")
    p.add_argument("--out", required=True, help="JSON record to write")
    add_data(p, required=False)
    add_run(p, "the model's")
    add_eval(p)


def cmd_evaluate(args) -> None:
    from .. import results
    from ..io import write_json

    model, meta = load(args.model)
    record = input_record(args, meta)
    bundle = load_data(data_options(args, meta), args.download)
    record = results.update_record(record, **evaluate(model, bundle, args))
    write_json(args.out, record)
    log(f"wrote {args.out}")
