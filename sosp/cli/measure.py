"""``sosp measure``: add the params, MACs (two counters) and latency of models to their records.

Latency depends on the architecture and the input shape, not on the values of the weights, so a model
of the same architecture as one timed earlier in the same call (a fine-tuned model and the pruned one
it came from) gets that model's timing instead of being timed again (``--time-each`` times every
model); its record says so (``details.latency_of``)."""

from __future__ import annotations

import time

from ..errors import ConfigError, check_non_negative_int
from .args import add_run, positive_int
from .common import input_record, load, log


def add_parser(sub) -> None:
    p = sub.add_parser(
        "measure",
        help="add params, MACs and latency of models to their records",
        description="Count params and MACs (two counters) and time each model on the CPU (and "
        "on a GPU, see --gpu-latency); write one record per model.",
    )
    p.add_argument("--model", required=True, nargs="+", help="model file(s)")
    p.add_argument(
        "--record", nargs="+", help="record(s) to update, one per model (default: the record stored with each model)"
    )
    p.add_argument("--out", required=True, nargs="+", help="JSON record(s) to write, one per model")
    p.add_argument(
        "--gpu-latency",
        choices=("auto", "always", "never"),
        default="auto",
        help="also time on the GPU: auto = when one is present (default), always = fail without one",
    )
    p.add_argument(
        "--input-shape",
        type=positive_int,
        nargs="+",
        metavar="N",
        help="one sample's shape, e.g. 3 32 32 (default: as recorded in the model)",
    )
    p.add_argument(
        "--latency-batches",
        type=positive_int,
        nargs="+",
        default=[1, 256],
        metavar="B",
        help="batch sizes to time (default 1 256)",
    )
    p.add_argument("--no-latency", action="store_true", help="count only, do not time")
    p.add_argument("--warmup", type=int, default=10, help="untimed iterations before timing (default 10)")
    p.add_argument("--iters", type=positive_int, default=30, help="timed iterations (default 30)")
    p.add_argument(
        "--time-each",
        action="store_true",
        help="time every model, also one of the same architecture as a model timed before in this call "
        "(default: reuse that timing)",
    )
    p.add_argument("--config-hash", metavar="HASH", help="config hash stored in every record (the workflow's)")
    add_run(p, "the model's")


def cmd_measure(args) -> None:
    from .. import measure, results
    from ..io import write_json

    if len(args.model) != len(args.out) or (args.record and len(args.record) != len(args.model)):
        raise ConfigError(
            f"give one --out (and one --record, if any) per --model: {len(args.model)} model(s), "
            f"{len(args.out)} --out, {len(args.record or [])} --record"
        )
    check_non_negative_int("--warmup", args.warmup)
    devices = [] if args.no_latency else measure.latency_devices(args.device, args.gpu_latency)
    batches = () if args.no_latency else tuple(args.latency_batches)
    timed: dict[tuple, tuple[str, list]] = {}  # architecture -> (model file, its latency entries)
    for i, (model_path, out) in enumerate(zip(args.model, args.out)):
        t0 = time.perf_counter()
        model, meta = load(model_path)
        record = input_record(args, meta, args.record[i] if args.record else "")
        shape = args.input_shape or meta.get("input_shape")
        if not shape:
            raise ConfigError(f"no input shape: give --input-shape (the model {model_path} records none)")
        arch = (_architecture(model), tuple(shape))
        same = None if args.time_each or not devices else timed.get(arch)
        log(
            f"measuring: input {tuple(shape)}, latency batches {list(batches) or 'none'} on "
            f"{', '.join(devices) or 'no device'}" + (f" (timing of {same[0]}, the same architecture)" if same else "")
        )
        m = measure.measure_on(
            model,
            tuple(shape),
            [] if same else devices,
            batches,
            warmup=args.warmup,
            iters=args.iters,
        )
        if same:
            m["latency"] = same[1]
        elif devices:
            timed[arch] = (model_path, m["latency"])
        log(
            f"params {m['params']:,}  MACs {m['macs']:,} (fvcore {m['macs_fvcore']:,})"
            + "".join(
                f"  {e['device']} b{e['batch_size']}: {e['median_ms']:.3f} ms (IQR {e['iqr_ms']:.3f})"
                for e in m.get("latency") or []
            )
        )
        if m.get("macs_fvcore") is not None and m["macs_fvcore"] != m["macs"]:
            log(f"warning: MAC counters disagree: torch {m['macs']:,} vs fvcore {m['macs_fvcore']:,}")
        details = {"input_shape": list(shape), "latency": m.get("latency")}
        if same:
            details["latency_of"] = same[0]
        details["measure_seconds"] = time.perf_counter() - t0
        fields = results.measurement_fields(m)
        if args.config_hash:
            fields["config_hash"] = args.config_hash
        record = results.update_record(record, **fields, details=details)
        write_json(out, record)
        log(f"wrote {out}")


def _architecture(model) -> tuple:
    """What latency depends on besides the input: the modules (their ``repr``: types, channels, kernel
    sizes, strides) and the shape and dtype of every tensor of the state."""
    return repr(model), tuple((k, tuple(v.shape), str(v.dtype)) for k, v in model.state_dict().items())
