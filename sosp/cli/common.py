"""What the verbs share at run time: progress logging, data options and loading, the training recipe,
resumable checkpoints, loading and saving models with their records, and evaluation.

Nothing here imports torch (or any other heavy library) until a verb runs, so ``sosp --help`` stays
quick.
"""

from __future__ import annotations

import hashlib
import json
import os
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
    _QUIET = bool(getattr(args, "quiet", False)) or os.environ.get("RANK", "0") != "0"  # one rank logs
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


def weights_digest(model) -> str:
    """Digest of a model's architecture (its ``repr``) and every tensor of its state: two files hold the
    same model exactly when their digests agree, whatever else their metadata says."""
    import torch

    h = hashlib.sha1(repr(model).encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(tensor.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_meta(record: dict, data_opts: dict, arch: str, arch_options: dict, bundle, **extra) -> dict:
    """The metadata saved with a base or widened model (its record summary, data options, architecture
    and input shape), so later verbs need only the model path; ``extra`` adds what the maker knows."""
    return {
        "record": summary(record),
        "data": data_opts,
        "arch": arch,
        "arch_options": arch_options,
        "num_classes": bundle.num_classes,
        "input_shape": list(bundle.example_input.shape[1:]),
        **extra,
    }


def data_parallel(args, body) -> None:
    """Run ``body(args)`` (``sosp train``/``finetune``) in a process group: with ``--nproc N`` > 1 this
    process launches N data-parallel workers running the same command
    (:func:`sosp.distributed.maybe_relaunch`) and exits with their status; each worker (and a plain
    run) joins the group and runs ``body``, rank 0 alone writing files."""
    from .. import distributed

    distributed.maybe_relaunch(sys.argv[1:], args.nproc)
    with distributed.process_group(args.device):
        body(args)


def drop_checkpoint(folder: Path | None, keep: bool) -> None:
    """Remove a finished run's checkpoint folder (rank 0 only, as it alone writes it)."""
    from .. import distributed

    if folder is not None and not keep and distributed.is_main():
        shutil.rmtree(folder, ignore_errors=True)


#: a finished run kept in its checkpoint folder: the model file (a hard link to the output) and its
#: history and compute seconds
_DONE_MODEL, _DONE_RUN = "done.pt", "done.json"


def _keep_finished(folder: Path, out: str, history: dict, seconds: float) -> None:
    """Replace ``folder/last.pt`` (model and optimizer state) by the finished run: a hard link to the
    model file just written (a copy where links are impossible), so keeping it costs no disk while the
    output exists, and the output's removal (Snakemake deletes a job's outputs before rerunning it)
    does not lose it."""
    from ..io import write_json

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{_DONE_MODEL}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.link(out, tmp)
    except OSError:
        shutil.copyfile(out, tmp)
    os.replace(tmp, folder / _DONE_MODEL)
    write_json(folder / _DONE_RUN, {"history": history, "seconds": seconds})
    (folder / "last.pt").unlink(missing_ok=True)


def _finished(folder: Path | None):
    """``(model, history, seconds)`` of a finished run kept in ``folder``, or None."""
    from ..io import read_json

    if folder is None or not (folder / _DONE_RUN).is_file() or not (folder / _DONE_MODEL).is_file():
        return None
    done = read_json(folder / _DONE_RUN)
    model, _ = load(str(folder / _DONE_MODEL))
    return model, done["history"], float(done["seconds"])


def train_and_save(
    model,
    bundle,
    config,
    args,
    *,
    seed: int,
    checkpoints: Path | None,
    what: str,
    out: str,
    record_path: str,
    build,
    reuse: bool = False,
) -> None:
    """The sequence of `train` and `finetune`: train ``model`` by ``config`` (resuming from
    ``checkpoints/last.pt`` if an interrupted run left one), evaluate it on ``--eval-split``, make its
    record and metadata by ``build(history, seconds, metric_fields, reused)`` and write both.

    ``seconds`` is the compute time of every epoch: this call's training time plus the recorded time
    of the epochs a checkpoint already held. With ``reuse``, a finished run kept in ``checkpoints``
    (same key: same input weights, data, recipe and seed) is evaluated and written again instead of
    trained (``reused`` is then true and ``seconds`` the time it took when it ran), and every finished
    run is kept there for the next call; the caller drops the folder when it is no longer wanted.
    """
    from .. import train

    finished = _finished(checkpoints) if reuse else None
    if finished is not None:
        model, history, seconds = finished
        log(f"reusing the finished {what} in {checkpoints} (same input weights, data, recipe and seed)")
    else:
        if checkpoints is not None and (checkpoints / "last.pt").exists():
            log(f"resuming from the checkpoint {checkpoints / 'last.pt'} of an interrupted run")
        ran = []
        log_epoch = epoch_logger(config.epochs, what)

        def log_and_count(rec: dict) -> None:
            ran.append(rec["epoch"])
            log_epoch(rec)

        t0 = time.perf_counter()
        history = train.train(
            model,
            bundle,
            config,
            seed=seed,
            checkpoint_dir=checkpoints,
            device=args.device,
            progress=not quiet(),
            log=log_and_count,
        )
        restored = history["seconds"][: len(history["seconds"]) - len(ran)]
        seconds = time.perf_counter() - t0 + sum(restored)
    record, meta = build(history, seconds, evaluate(model, bundle, args), finished is not None)
    record.setdefault("details", {})["runtime"] = train.runtime_options(config, args.device)
    from .. import distributed

    if distributed.is_main():  # data-parallel workers all train and evaluate; rank 0 alone writes
        save(out, model, meta, record, record_path)
        if reuse and checkpoints is not None:
            _keep_finished(checkpoints, out, history, seconds)


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


def input_record(args, meta: dict, path: str | None = None) -> dict:
    """The record to update: ``path`` (default ``--record``) if given, else the one stored with the model."""
    from ..results import read_record

    path = path if path is not None else getattr(args, "record", None)
    if path:
        return read_record(path, args.tier)
    return base_record(meta, args)
