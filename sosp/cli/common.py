"""What the verbs share at run time: progress logging, data options and loading, the training recipe,
resumable checkpoints, loading and saving models with their records, and evaluation.

Nothing here imports torch (or any other heavy library) until a verb runs, so ``sosp --help`` stays
quick.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

from .. import utils
from ..errors import ConfigError, DataError, SospError
from .args import load_mapping

_QUIET = False


def log(message: str) -> None:
    if not _QUIET:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def quiet() -> bool:
    """Whether progress output is off (``--quiet``)."""
    return _QUIET


def setup(args) -> None:
    global _QUIET
    _QUIET = bool(getattr(args, "quiet", False))
    utils.show_progress(not _QUIET)
    threads = getattr(args, "threads", None)
    if threads:
        import torch

        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------
def data_options(args, meta: dict | None = None) -> dict:
    """Data options: the model's recorded ones, overridden by those given on the command line."""
    recorded = dict((meta or {}).get("data") or {})
    given = {
        "name": args.dataset,
        "root": args.data_root,
        "val_fraction": args.val_fraction,
        "train_subset": args.train_subset,
        "seed": args.split_seed,
        "image_size": args.image_size,
    }
    options = {
        "name": None,
        "root": None,
        "val_fraction": 0.1,
        "train_subset": None,
        "seed": 0,
        "image_size": None,
        **recorded,
        **{k: v for k, v in given.items() if v is not None},
    }
    if not options["name"]:
        raise ConfigError("no data set: give --dataset (the model records none)")
    from ..data import DATASETS
    from ..errors import UnknownNameError

    if options["name"] not in DATASETS:  # before anything else can fail on it
        raise UnknownNameError("dataset", options["name"], DATASETS)
    if not 0.0 <= options["val_fraction"] < 1.0:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {options['val_fraction']}")
    return options


def load_data(options: dict, download: bool = False):
    from .. import data

    root = options.get("root")
    if root is not None and not download and not Path(root).exists():
        raise DataError(f"data root not found: {root} (give an existing --data-root, or --download)")
    log(f"loading data set {options['name']}" + (f" from {root}" if root else ""))
    bundle = data.load(
        options["name"],
        root=root,
        download=download,
        val_fraction=options["val_fraction"],
        train_subset=options["train_subset"],
        seed=options["seed"],
        image_size=options["image_size"],
    )
    log(
        f"data: {len(bundle.train)} train / {len(bundle.val)} val / {len(bundle.test)} test examples, "
        f"{bundle.num_classes} classes, {bundle.in_channels}x{bundle.image_size}x{bundle.image_size}"
    )
    return bundle


# ---------------------------------------------------------------------------------------------------
# training: the recipe, resumable checkpoints, progress
# ---------------------------------------------------------------------------------------------------
def train_config(args, default: dict | None):
    from ..train import TrainConfig

    config = dict(default or {})
    if args.train_config:
        config = load_mapping(args.train_config, "--train-config")
    overrides = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "momentum": args.momentum,
        "weight_decay": args.weight_decay,
        "schedule": args.schedule,
    }
    config.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(config)


def checkpoint_dir(root: str | None, **key) -> Path | None:
    """``root/<digest of key>``: a job's checkpoint is resumed only by the same job (same input model,
    architecture, data, recipe and seed), never by a job whose inputs changed in between."""
    if not root:
        return None
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(root) / digest


def log_resume(folder: Path | None) -> None:
    if folder is not None and (folder / "last.pt").exists():
        log(f"resuming from the checkpoint {folder / 'last.pt'} of an interrupted run")


def drop_checkpoint(folder: Path | None, keep: bool) -> None:
    if folder is not None and not keep:
        shutil.rmtree(folder, ignore_errors=True)


def epoch_logger(total: int, what: str):
    def log_epoch(rec: dict) -> None:
        val = rec.get("val_top1")
        log(
            f"{what} epoch {rec['epoch']}/{total}: loss {rec['train_loss']:.4f}"
            + (f"  val top1 {100 * val:.2f}%" if val is not None else "")
            + f"  lr {rec['lr']:.4g}  ({rec['seconds']:.1f} s)"
        )

    return log_epoch


def evaluate(model, bundle, args) -> dict:
    """Top-1/top-5/loss on ``--eval-split``, as record fields."""
    from .. import results, train

    split = args.eval_split
    t0 = time.perf_counter()
    metrics = train.evaluate(
        model,
        {"train": bundle.train, "val": bundle.val, "test": bundle.test}[split],
        batch_size=args.eval_batch_size,
        device=args.device,
    )
    log(
        f"{split}: top1 {100 * metrics['top1']:.2f}%  top5 {100 * metrics['top5']:.2f}%  "
        f"loss {metrics['loss']:.4f}  ({time.perf_counter() - t0:.1f} s)"
    )
    return results.metric_fields(metrics, split)


# ---------------------------------------------------------------------------------------------------
# models and records
# ---------------------------------------------------------------------------------------------------
def load(path: str, device: str = "cpu"):
    """The model and metadata of a model file; a file that is not one is a user error."""
    from ..io import load_model

    log(f"loading model {path}")
    try:
        model, meta = load_model(path, map_location=device)
    except SospError:
        raise
    except Exception as exc:  # a truncated or foreign file
        raise DataError(f"cannot load model file {path}: {type(exc).__name__}: {exc}") from None
    return model, meta


def save(path: str, model, meta: dict, record: dict, record_path: str) -> None:
    from ..io import save_model, write_json

    save_model(path, model.to("cpu"), meta)  # loadable without the device it was trained on
    write_json(record_path, record)
    log(f"wrote {path} and {record_path}")


def summary(record: dict) -> dict:
    """The record stored in a model's metadata: all of it but ``details``."""
    return {k: v for k, v in record.items() if k != "details"}


def base_record(meta: dict, args) -> dict:
    """The record stored with a model, with ``--tier`` applied."""
    record = dict(meta.get("record") or {})
    if not record:
        raise DataError("the model file carries no record (was it written by `sosp`?); give --record")
    if getattr(args, "tier", None):
        record["tier"] = args.tier
    return record


def read_record(path: str, tier: str | None = None) -> dict:
    from ..io import read_json

    if not Path(path).is_file():
        raise DataError(f"record file not found: {path}")
    try:
        record = read_json(path)
    except ValueError as exc:
        raise DataError(f"cannot read record {path}: {exc}") from None
    if tier:
        record["tier"] = tier
    return record


def input_record(args, meta: dict, path: str | None = None) -> dict:
    """The record to update: ``path`` (default ``--record``) if given, else the one stored with the model."""
    path = path if path is not None else getattr(args, "record", None)
    if path:
        return read_record(path, args.tier)
    return base_record(meta, args)
