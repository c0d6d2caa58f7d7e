"""``sosp <verb>``: the command line that every workflow rule calls, also usable by hand.

Verbs: ``data`` (load/download a data set once), ``train`` (base or widened model), ``prune`` (score once,
prune one-shot at one or more ratios), ``finetune``, ``evaluate`` (add test metrics to a record),
``measure`` (add params/MACs/latency to records), ``bottleneck`` (layer-wise pruning ratios -> the
widths of widened networks) and ``report`` (records -> runs.csv, tables, figures). Each verb reads explicit paths, writes its outputs atomically, prints
progress to stderr, and turns every user error into ONE line ``sosp: error: ...`` with exit code 2.

Models are saved with metadata (``meta``): the record so far (``meta["record"]``), the data options
(``meta["data"]``) and the input shape, so later verbs need only the model path; every such default
can be overridden on the command line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import utils
from .errors import ConfigError, DataError, SospError, is_positive_int

PROG = "sosp"


# ---------------------------------------------------------------------------------------------------
# argument parsing
# ---------------------------------------------------------------------------------------------------
class UsageError(SospError):
    """A command-line usage error (argparse)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (via main), never usage text on stderr
        raise UsageError(
            f"{self.prog.removeprefix(PROG).strip() + ': ' if self.prog != PROG else ''}{message}"
            f" (see '{self.prog} --help')"
        )

    def format_help(self) -> str:
        if callable(self.epilog):  # built when the help is shown (listing the methods imports torch)
            self.epilog = self.epilog()
        return super().format_help()


def _methods_help() -> str:
    from . import methods  # when the help is shown: the methods import torch

    return methods.describe()


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratio must be a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"ratio must be in [0, 1), got {text}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text}")
    return value


def _positive_int(text: str) -> int:
    """argparse type; the wording of :func:`sosp.errors.check_positive_int` after argparse's "argument --x:"."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if not is_positive_int(value):
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _parse_value(text: str) -> Any:
    """``3`` -> 3, ``0.5`` -> 0.5, ``true`` -> True, ``[1,2]`` -> [1, 2], ``null`` -> None, else the text."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    low = text.strip().lower()
    if low in ("true", "false", "none", "null"):
        return {"true": True, "false": False}.get(low)
    return text


def _key_text(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key.strip().replace("-", "_"), value


def _key_value(text: str) -> tuple[str, Any]:
    key, value = _key_text(text)
    return key, _parse_value(value)


def _load_mapping(text: str, what: str) -> dict:
    """A JSON object given inline, or a path to a JSON or YAML file holding one."""
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{what} is not valid JSON: {exc}") from None
    else:
        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"{what} must be a JSON object or a JSON/YAML file; file not found: {text}")
        import yaml

        try:
            value = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
        except yaml.YAMLError as exc:
            raise ConfigError(f"cannot parse {what} file {path}: {exc}".replace("\n", " ")) from None
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a mapping (JSON object), got {type(value).__name__}")
    return value


def _add_data(p: argparse.ArgumentParser, required: bool) -> None:
    g = p.add_argument_group("data" + ("" if required else " (default: as recorded in the model)"))
    g.add_argument(
        "--dataset", required=required, help="data set name (digits, cifar10, cifar100, imagefolder, imagenet)"
    )
    g.add_argument("--data-root", help="folder holding (or receiving) the data set files")
    g.add_argument("--download", action="store_true", help="download the data set if missing")
    g.add_argument(
        "--val-fraction", type=float, help="fraction of the training split held out for validation (default 0.1)"
    )
    g.add_argument("--train-subset", type=_positive_int, help="use only this many training examples")
    g.add_argument("--split-seed", type=int, help="seed of the validation/subset split (default 0)")
    g.add_argument("--image-size", type=_positive_int, help="resize images to this size (folder data)")


def _add_run(p: argparse.ArgumentParser, seed_default: str = "0") -> None:
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, help=f"random seed (default {seed_default})")
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    g.add_argument("--threads", type=_positive_int, help="torch intra-op threads (default: torch's)")
    g.add_argument("--tier", help="tier name stored in the record (default: from the model, else 'adhoc')")
    g.add_argument("--quiet", action="store_true", help="no progress output")


def _add_train_config(p: argparse.ArgumentParser, what: str, default: str) -> None:
    g = p.add_argument_group(f"{what} recipe (sosp.train.TrainConfig)")
    g.add_argument(
        "--train-config",
        metavar="JSON|FILE",
        help=f"the full recipe as a JSON object or a JSON/YAML file; the options below override it ({default})",
    )
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=_positive_int)
    g.add_argument("--lr", type=float)
    g.add_argument("--momentum", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--schedule", choices=("cosine", "step"))
    g.add_argument(
        "--checkpoint-dir",
        help="folder for resumable end-of-epoch checkpoints: a rerun of the "
        "same job (same inputs, recipe and seed) resumes; removed after success unless "
        "--keep-checkpoint",
    )
    g.add_argument("--keep-checkpoint", action="store_true", help="keep the checkpoint after success")


def _add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--eval-split",
        default="test",
        choices=("test", "val", "train"),
        help="split for top1/top5/loss in the record (default test)",
    )
    p.add_argument("--eval-batch-size", type=_positive_int, default=512)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Structured pruning benchmark (SOSP-H, SOSP-I and baselines).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=_Parser)

    p = sub.add_parser(
        "data",
        help="load (and download) a data set once; write a summary",
        description="Load a data set (downloading it with --download), check it, and write a "
        "JSON summary of its splits; run once before parallel jobs read it.",
    )
    p.add_argument("--out", help="JSON summary to write (default: print it)")
    _add_data(p, required=True)
    p.add_argument("--quiet", action="store_true", help="no progress output")

    p = sub.add_parser(
        "train",
        help="train a model from scratch; write it and its record",
        description="Train a model from scratch and write it with a record (stage base).",
    )
    p.add_argument("--arch", required=True, help="model name (resnet20, vgg11, torchvision:resnet18, ...)")
    p.add_argument(
        "--arch-option",
        type=_key_value,
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
    _add_data(p, required=True)
    _add_run(p)
    _add_train_config(p, "training", "default for digits: sosp.train.DEFAULT_DIGITS_CONFIG")
    _add_eval(p)

    p = sub.add_parser(
        "prune",
        help="score and prune a model once; write it and its record",
        description="Score structures on calibration data (training split, no augmentation),\n"
        "prune, evaluate the one-shot pruned model, write it and its record.",
        epilog=_methods_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model file to prune (from `sosp train`)")
    p.add_argument("--method", required=True, help="pruning method (sosp.methods; listed below)")
    p.add_argument(
        "--ratio",
        required=True,
        type=_ratio,
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
    p.add_argument("--min-channels", type=_positive_int, default=1, help="channels kept per group (default 1)")
    p.add_argument(
        "--min-fraction",
        type=_fraction,
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
        type=_key_text,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method option (repeatable), e.g. combine=joint; checked against the method's "
        "declared options (listed below)",
    )
    p.add_argument(
        "--samples", type=_positive_int, default=1024, help="calibration samples used for scoring (default 1024)"
    )
    p.add_argument("--score-batch-size", type=_positive_int, default=128, help="batch size for scoring (default 128)")
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
    _add_data(p, required=False)
    _add_run(p, "the model's")
    _add_eval(p)

    p = sub.add_parser(
        "finetune",
        help="fine-tune a pruned model; write it and its record",
        description="Fine-tune a pruned model and write it with a record (stage finetuned).",
    )
    p.add_argument("--model", required=True, help="pruned model file (from `sosp prune`)")
    p.add_argument("--out", required=True, help="model file to write")
    p.add_argument("--record", required=True, help="JSON record to write")
    _add_data(p, required=False)
    _add_run(p, "the model's")
    _add_train_config(p, "fine-tuning", "no default: give it, or at least --epochs, --batch-size and --lr")
    _add_eval(p)

    p = sub.add_parser(
        "evaluate",
        help="add top1/top5/loss of a model to a record",
        description="Evaluate a model and write a record with its top1/top5/loss.",
    )
    p.add_argument("--model", required=True, help="model file")
    p.add_argument("--record", help="record to update (default: the record stored with the model)")
    p.add_argument("--out", required=True, help="JSON record to write")
    _add_data(p, required=False)
    _add_run(p, "the model's")
    _add_eval(p)

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
        type=_positive_int,
        nargs="+",
        metavar="N",
        help="one sample's shape, e.g. 3 32 32 (default: as recorded in the model)",
    )
    p.add_argument(
        "--latency-batches",
        type=_positive_int,
        nargs="+",
        default=[1, 256],
        metavar="B",
        help="batch sizes to time (default 1 256)",
    )
    p.add_argument("--no-latency", action="store_true", help="count only, do not time")
    p.add_argument("--warmup", type=int, default=10, help="untimed iterations before timing (default 10)")
    p.add_argument("--iters", type=_positive_int, default=30, help="timed iterations (default 30)")
    _add_run(p, "the model's")

    p = sub.add_parser(
        "bottleneck",
        help="layer-wise pruning ratios -> bottlenecks -> widened widths",
        description="From pruned records (details.prune_report of `sosp prune`, e.g. SOSP-H at "
        "several ratios and seeds): the fraction of each layer's (width key's) and "
        "block's channels removed, the bottlenecks (lowest ratios at --ratio, mean "
        "over seeds), and the widths of the bottleneck-widened and the uniformly "
        "widened networks; one JSON analysis for `sosp train --widths`.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="a model file of the pruned architecture (e.g. its base model; only its width keys are used)",
    )
    p.add_argument(
        "--report", required=True, nargs="+", help="pruned record files (or folders searched for *.json) of one method"
    )
    p.add_argument(
        "--ratio",
        type=_ratio,
        help="pruning ratio whose layer-wise ratios choose the bottlenecks "
        "(default: the median of the records' ratios)",
    )
    p.add_argument(
        "--selection",
        choices=("fraction", "threshold"),
        default="fraction",
        help="fraction: the lowest --value fraction of layers; threshold: every layer pruned by "
        "at most --value (default fraction)",
    )
    p.add_argument("--value", type=float, default=0.25, help="fraction or threshold (default 0.25)")
    p.add_argument(
        "--level",
        choices=("layer", "block"),
        default="layer",
        help="widen the chosen layers, or every layer of the chosen blocks (default layer)",
    )
    p.add_argument("--factor", type=float, default=2.0, help="widening factor of the bottlenecks (default 2)")
    p.add_argument(
        "--uniform-factor",
        type=float,
        default=1.1,
        help="widening factor of every layer of the uniform baseline (default 1.1)",
    )
    p.add_argument("--out", required=True, help="JSON analysis to write")
    p.add_argument("--tier", help="tier name stored in the analysis (default: the records')")
    p.add_argument("--quiet", action="store_true", help="no progress output")

    p = sub.add_parser(
        "report",
        help="aggregate records into runs.csv, tables and figures",
        description="Aggregate records into OUT_DIR/runs.csv, OUT_DIR/tables/<table>.{md,tex} "
        "and OUT_DIR/figures/<figure>.{png,pdf}; needs no model file.",
    )
    p.add_argument("records", nargs="+", help="record files, or folders searched for *.json, or one runs.csv")
    p.add_argument("--out-dir", required=True, help="folder for runs.csv, tables/ and figures/")
    p.add_argument(
        "--only",
        nargs="+",
        choices=("runs", "tables", "figures"),
        default=("runs", "tables", "figures"),
        help="what to write (default all three)",
    )
    p.add_argument(
        "--tables",
        nargs="*",
        metavar="NAME",
        help="tables to write (default: all of sosp.results.TABLES: summary, paper, timing)",
    )
    p.add_argument("--figures", nargs="*", metavar="NAME", help="figures to draw (default: all registered)")
    p.add_argument(
        "--bottleneck",
        nargs="*",
        default=(),
        metavar="PATH",
        help="analyses of `sosp bottleneck` (files, or folders searched for *.json) for the layer_ratios figure",
    )
    p.add_argument("--formats", nargs="+", default=["png", "pdf"], help="figure formats (default png pdf)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


# ---------------------------------------------------------------------------------------------------
# helpers shared by the verbs
# ---------------------------------------------------------------------------------------------------
_QUIET = False


def _log(message: str) -> None:
    if not _QUIET:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _version() -> str:
    from . import __version__

    return __version__


def _setup(args) -> None:
    global _QUIET
    _QUIET = bool(getattr(args, "quiet", False))
    utils.show_progress(not _QUIET)
    threads = getattr(args, "threads", None)
    if threads:
        import torch

        torch.set_num_threads(threads)


def _data_options(args, meta: dict | None = None) -> dict:
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
    from .data import DATASETS
    from .errors import UnknownNameError

    if options["name"] not in DATASETS:  # before anything else can fail on it
        raise UnknownNameError("dataset", options["name"], DATASETS)
    if not 0.0 <= options["val_fraction"] < 1.0:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {options['val_fraction']}")
    return options


def _load_data(options: dict, download: bool = False):
    from . import data

    root = options.get("root")
    if root is not None and not download and not Path(root).exists():
        raise DataError(f"data root not found: {root} (give an existing --data-root, or --download)")
    _log(f"loading data set {options['name']}" + (f" from {root}" if root else ""))
    bundle = data.load(
        options["name"],
        root=root,
        download=download,
        val_fraction=options["val_fraction"],
        train_subset=options["train_subset"],
        seed=options["seed"],
        image_size=options["image_size"],
    )
    _log(
        f"data: {len(bundle.train)} train / {len(bundle.val)} val / {len(bundle.test)} test examples, "
        f"{bundle.num_classes} classes, {bundle.in_channels}x{bundle.image_size}x{bundle.image_size}"
    )
    return bundle


def _train_config(args, default: dict | None):
    from .train import TrainConfig

    config = dict(default or {})
    if args.train_config:
        config = _load_mapping(args.train_config, "--train-config")
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


def _default_train_config(dataset: str) -> dict | None:
    from . import train

    return train.DEFAULT_DIGITS_CONFIG.to_dict() if dataset == "digits" else None


def _checkpoint_dir(root: str | None, **key) -> Path | None:
    """``root/<digest of key>``: a job's checkpoint is resumed only by the same job (same input model,
    architecture, data, recipe and seed), never by a job whose inputs changed in between."""
    if not root:
        return None
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(root) / digest


def _log_resume(folder: Path | None) -> None:
    if folder is not None and (folder / "last.pt").exists():
        _log(f"resuming from the checkpoint {folder / 'last.pt'} of an interrupted run")


def _file_digest(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _drop_checkpoint(folder: Path | None, keep: bool) -> None:
    if folder is not None and not keep:
        shutil.rmtree(folder, ignore_errors=True)


def _load(path: str, device: str = "cpu"):
    from .io import load_model

    _log(f"loading model {path}")
    try:
        model, meta = load_model(path, map_location=device)
    except SospError:
        raise
    except Exception as exc:  # a truncated or foreign file
        raise DataError(f"cannot load model file {path}: {type(exc).__name__}: {exc}") from None
    return model, meta


def _split(bundle, name: str):
    return {"train": bundle.train, "val": bundle.val, "test": bundle.test}[name]


def _evaluate(model, bundle, args) -> dict:
    from . import results, train

    split = args.eval_split
    t0 = time.perf_counter()
    metrics = train.evaluate(model, _split(bundle, split), batch_size=args.eval_batch_size, device=args.device)
    _log(
        f"{split}: top1 {100 * metrics['top1']:.2f}%  top5 {100 * metrics['top5']:.2f}%  "
        f"loss {metrics['loss']:.4f}  ({time.perf_counter() - t0:.1f} s)"
    )
    return results.metric_fields(metrics, split)


def _epoch_logger(total: int, what: str):
    def log(rec: dict) -> None:
        val = rec.get("val_top1")
        _log(
            f"{what} epoch {rec['epoch']}/{total}: loss {rec['train_loss']:.4f}"
            + (f"  val top1 {100 * val:.2f}%" if val is not None else "")
            + f"  lr {rec['lr']:.4g}  ({rec['seconds']:.1f} s)"
        )

    return log


def _save(path: str, model, meta: dict, record: dict, record_path: str) -> None:
    from .io import save_model, write_json

    save_model(path, model.to("cpu"), meta)  # loadable without the device it was trained on
    write_json(record_path, record)
    _log(f"wrote {path} and {record_path}")


def _base_record(meta: dict, args) -> dict:
    """The record stored with a model, with ``--tier`` applied."""
    record = dict(meta.get("record") or {})
    if not record:
        raise DataError("the model file carries no record (was it written by `sosp`?); give --record")
    if getattr(args, "tier", None):
        record["tier"] = args.tier
    return record


# ---------------------------------------------------------------------------------------------------
# verbs
# ---------------------------------------------------------------------------------------------------
def cmd_data(args) -> None:
    from .io import write_json

    options = _data_options(args)
    bundle = _load_data(options, args.download)
    summary = {
        "data": options,
        "num_classes": bundle.num_classes,
        "in_channels": bundle.in_channels,
        "image_size": bundle.image_size,
        "input_shape": list(bundle.example_input.shape[1:]),
        "train": len(bundle.train),
        "val": len(bundle.val),
        "test": len(bundle.test),
        "classes": list(bundle.classes),
    }
    if args.out:
        write_json(args.out, summary)
        _log(f"wrote {args.out}")
    else:
        print(json.dumps(summary, indent=2))


def _widths(args) -> tuple[dict, str]:
    """Model options and variant label from --widths / --width-multiplier / --variant."""
    from . import bottleneck

    spec = _load_mapping(args.widths, "--widths") if args.widths else None
    return bottleneck.width_options(
        spec, arch=args.arch, variant=args.variant, width_multiplier=args.width_multiplier, source=args.widths
    )


def cmd_train(args) -> None:
    from . import models, results, train

    data_opts = _data_options(args)
    config = _train_config(args, _default_train_config(data_opts["name"]))
    width_options, variant = _widths(args)
    arch_options = {**dict(args.arch_option), **width_options}
    stage = args.stage or ("base" if variant == results.ORIGINAL else "widened")
    bundle = _load_data(data_opts, args.download)
    seed = 0 if args.seed is None else args.seed
    train.seed_everything(seed)
    model = models.create(args.arch, num_classes=bundle.num_classes, in_channels=bundle.in_channels, **arch_options)
    params = sum(p.numel() for p in model.parameters())
    _log(
        f"training {args.arch}{'' if variant == results.ORIGINAL else f' ({variant})'} ({params:,} params), "
        f"seed {seed}: {config}"
    )
    t0 = time.perf_counter()
    checkpoints = _checkpoint_dir(
        args.checkpoint_dir,
        arch=args.arch,
        arch_options=arch_options,
        data=data_opts,
        seed=seed,
        config=config.to_dict(),
    )
    _log_resume(checkpoints)
    history = train.train(
        model,
        bundle,
        config,
        seed=seed,
        checkpoint_dir=checkpoints,
        device=args.device,
        progress=not _QUIET,
        log=_epoch_logger(config.epochs, "train"),
    )
    seconds = time.perf_counter() - t0
    fields = _evaluate(model, bundle, args)
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
    meta = {
        "record": {k: v for k, v in record.items() if k != "details"},
        "data": data_opts,
        "arch": args.arch,
        "arch_options": arch_options,
        "num_classes": bundle.num_classes,
        "input_shape": list(bundle.example_input.shape[1:]),
        "train_config": config.to_dict(),
    }
    _save(args.out, model, meta, record, args.record)
    _drop_checkpoint(checkpoints, args.keep_checkpoint)


def cmd_prune(args) -> None:
    import torch

    from . import data, methods, prune, results

    if args.warmup_batches < 0:
        raise ConfigError(f"--warmup-batches must be >= 0, got {args.warmup_batches}")
    if not len(args.ratio) == len(args.out) == len(args.record):
        raise ConfigError(
            f"give one --out and one --record per --ratio: {len(args.ratio)} ratio(s), "
            f"{len(args.out)} --out, {len(args.record)} --record"
        )
    model, meta = _load(args.model)
    base = _base_record(meta, args)
    data_opts = _data_options(args, meta)
    seed = base.get("seed", 0) if args.seed is None else args.seed
    method = methods.get(args.method)  # an unknown method or option fails before the data is loaded
    options = method.parse(args.option)
    bundle = _load_data(data_opts, args.download)
    example = bundle.example_input[:1].to(args.device)
    model.to(args.device)

    def calibration():
        return data.batches(
            bundle.train,
            args.score_batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
            augment=None,
            device=args.device,
        )

    _log(
        f"pruning with {args.method} to ratio(s) {', '.join(map(str, args.ratio))} of {args.target} "
        f"({args.samples} calibration samples, options {options or 'default'})"
    )
    runs = prune.run_ratios(
        args.method,
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
        log=_log,
        **options,
    )
    for ratio, result, out, record_path in zip(args.ratio, runs, args.out, args.record):
        pruned = result.model
        report = result.report
        _log(
            f"ratio {ratio}: removed {100 * report['achieved_fraction']:.1f}% of structures: params "
            f"{report['params_before']:,} -> {report['params_after']:,}, MACs {report['macs_before']:,} -> "
            f"{report['macs_after']:,} ({report['prune_seconds']:.1f} s)"
        )
        fields = _evaluate(pruned, bundle, args)
        details = {k: v for k, v in report.items() if k not in ("scores", "options", "resolved_options")}
        record = results.make_record(
            "pruned",
            **{k: base.get(k) for k in ("tier", "dataset", "arch", "variant")},
            seed=seed,
            method=args.method,
            ratio=ratio,
            target=args.target,
            method_options=options,
            samples=min(args.samples, len(bundle.train)),
            train_epochs=base.get("train_epochs"),
            finetune_epochs=0,
            **results.prune_fields(report),
            **fields,
            details={"method_options_resolved": report["resolved_options"], "prune_report": details},
        )
        new_meta = {
            **meta,
            "record": {k: v for k, v in record.items() if k != "details"},
            "data": data_opts,
            "removed": result.removed,
            "scores": report.get("scores"),
        }
        _save(out, pruned, new_meta, record, record_path)


#: fields of the pruned record that the fine-tuned record keeps (the cost of getting there)
_CARRIED = (
    "achieved_fraction",
    "samples",
    "saliency_seconds",
    "selection_seconds",
    "prune_seconds",
    "train_epochs",
    "min_channels",
    "min_fraction",
    "normalize",
    "min_kept_fraction",
    "removed_per_layer",
)


def cmd_finetune(args) -> None:
    from . import results, train

    model, meta = _load(args.model)
    base = _base_record(meta, args)
    data_opts = _data_options(args, meta)
    config = _train_config(args, None)
    seed = base.get("seed", 0) if args.seed is None else args.seed
    bundle = _load_data(data_opts, args.download)
    _log(
        f"fine-tuning {base.get('arch')} pruned by {base.get('method')} at ratio {base.get('ratio')}, "
        f"seed {seed}: {config}"
    )
    t0 = time.perf_counter()
    checkpoints = _checkpoint_dir(
        args.checkpoint_dir, model=_file_digest(args.model), data=data_opts, seed=seed, config=config.to_dict()
    )
    _log_resume(checkpoints)
    history = train.train(
        model,
        bundle,
        config,
        seed=seed,
        checkpoint_dir=checkpoints,
        device=args.device,
        progress=not _QUIET,
        log=_epoch_logger(config.epochs, "fine-tune"),
    )
    seconds = time.perf_counter() - t0
    fields = _evaluate(model, bundle, args)
    record = results.make_record(
        "finetuned",
        tier=base["tier"],
        dataset=base["dataset"],
        arch=base["arch"],
        variant=base.get("variant"),
        seed=seed,
        method=base.get("method"),
        ratio=base.get("ratio"),
        target=base.get("target"),
        method_options=base.get("method_options"),
        **{k: base.get(k) for k in _CARRIED},
        params=sum(p.numel() for p in model.parameters()),
        macs=base.get("macs"),
        finetune_epochs=config.epochs,
        finetune_seconds=seconds,
        **fields,
        details={"finetune_config": config.to_dict(), "history": history},
    )
    new_meta = {**meta, "record": {k: v for k, v in record.items() if k != "details"}, "data": data_opts}
    _save(args.out, model, new_meta, record, args.record)
    _drop_checkpoint(checkpoints, args.keep_checkpoint)


def _read_record(path: str, tier: str | None = None) -> dict:
    from .io import read_json

    if not Path(path).is_file():
        raise DataError(f"record file not found: {path}")
    try:
        record = read_json(path)
    except ValueError as exc:
        raise DataError(f"cannot read record {path}: {exc}") from None
    if tier:
        record["tier"] = tier
    return record


def _input_record(args, meta: dict, path: str | None = None) -> dict:
    path = path if path is not None else getattr(args, "record", None)
    if path:
        return _read_record(path, args.tier)
    return _base_record(meta, args)


def cmd_evaluate(args) -> None:
    from . import results
    from .io import write_json

    model, meta = _load(args.model)
    record = _input_record(args, meta)
    bundle = _load_data(_data_options(args, meta), args.download)
    record = results.update_record(record, **_evaluate(model, bundle, args))
    write_json(args.out, record)
    _log(f"wrote {args.out}")


def _latency_devices(args) -> list[str]:
    """CPU always; a GPU too when asked (--device cuda..., or --gpu-latency always/auto with one present)."""
    import torch

    devices = ["cpu"]
    gpu = args.device if args.device.startswith("cuda") else "cuda"
    if args.gpu_latency == "always" or args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"GPU latency asked for ({'--device ' + args.device if args.device != 'cpu' else '--gpu-latency always'}), "
                "but torch sees no CUDA device"
            )
        devices.append(gpu)
    elif args.gpu_latency == "auto" and torch.cuda.is_available():
        devices.append(gpu)
    return devices


def cmd_measure(args) -> None:
    import torch

    from . import measure, results
    from .io import write_json

    if len(args.model) != len(args.out) or (args.record and len(args.record) != len(args.model)):
        raise ConfigError(
            f"give one --out (and one --record, if any) per --model: {len(args.model)} model(s), "
            f"{len(args.out)} --out, {len(args.record or [])} --record"
        )
    if args.warmup < 0:
        raise ConfigError(f"--warmup must be >= 0, got {args.warmup}")
    devices = [] if args.no_latency else _latency_devices(args)
    batches = () if args.no_latency else tuple(args.latency_batches)
    for i, (model_path, out) in enumerate(zip(args.model, args.out)):
        model, meta = _load(model_path)
        record = _input_record(args, meta, args.record[i] if args.record else "")
        shape = args.input_shape or meta.get("input_shape")
        if not shape:
            raise ConfigError(f"no input shape: give --input-shape (the model {model_path} records none)")
        _log(
            f"measuring: input {tuple(shape)}, latency batches {list(batches) or 'none'} on "
            f"{', '.join(devices) or 'no device'}"
        )
        m = measure.measure(
            model,
            tuple(shape),
            latency_batches=batches if "cpu" in devices else (),
            device="cpu",
            latency="cpu" in devices,
            warmup=args.warmup,
            iters=args.iters,
        )
        for device in devices:
            if device == "cpu":
                continue
            x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
            m["latency"] += [
                measure.measure_latency(model, x.expand(b, *shape).contiguous(), device, args.warmup, args.iters)
                for b in batches
            ]
        _log(
            f"params {m['params']:,}  MACs {m['macs']:,} (fvcore {m['macs_fvcore']:,})"
            + "".join(
                f"  {e['device']} b{e['batch_size']}: {e['median_ms']:.3f} ms (IQR {e['iqr_ms']:.3f})"
                for e in m.get("latency") or []
            )
        )
        if m.get("macs_fvcore") is not None and m["macs_fvcore"] != m["macs"]:
            _log(f"warning: MAC counters disagree: torch {m['macs']:,} vs fvcore {m['macs_fvcore']:,}")
        record = results.update_record(
            record, **results.measurement_fields(m), details={"input_shape": list(shape), "latency": m.get("latency")}
        )
        write_json(out, record)
        _log(f"wrote {out}")


def cmd_bottleneck(args) -> None:
    from . import bottleneck, results
    from .io import write_json

    model, meta = _load(args.model)
    paths = results.record_paths(args.report)
    if not paths:
        raise DataError(f"no records found in {' '.join(args.report)}")
    records = [_read_record(str(p)) for p in paths]
    analysis = bottleneck.analyse(
        model,
        meta,
        records,
        ratio=args.ratio,
        selection=args.selection,
        value=args.value,
        level=args.level,
        factor=args.factor,
        uniform_factor=args.uniform_factor,
        tier=args.tier,
        record_names=[str(p) for p in paths],
    )
    write_json(args.out, analysis)
    keys, mean = analysis["bottlenecks"], analysis["layer_ratios"]
    sizes = (
        analysis["params"],
        analysis["variants"]["bottleneck"]["params"],
        analysis["variants"]["uniform"]["params"],
    )
    _log(
        f"bottlenecks of {analysis['arch']} at ratio {analysis['ratio']} ({args.selection} {args.value}, "
        f"{args.level}s): "
        + ", ".join(f"{k} ({100 * mean[k]:.0f}% removed)" for k in keys)
        + (f"; params {sizes[0]:,} -> bottleneck-widened {sizes[1]:,}, uniform {sizes[2]:,}" if all(sizes) else "")
        + f"; wrote {args.out}"
    )


def _bottleneck_analyses(paths) -> list[dict]:
    from .io import read_json

    found = []
    for p in map(Path, paths or ()):
        found += sorted(p.rglob("*.json")) if p.is_dir() else [p] if p.exists() else []
        if not p.exists():
            raise DataError(f"bottleneck analysis not found: {p}")
    analyses = []
    for path in found:
        try:
            analysis = read_json(path)
        except ValueError as exc:
            raise DataError(f"cannot read bottleneck analysis {path}: {exc}") from None
        if not isinstance(analysis, dict) or "by_ratio" not in analysis:
            raise DataError(f"{path} is not an analysis of `sosp bottleneck` (no by_ratio)")
        analyses.append(analysis)
    return analyses


def cmd_report(args) -> None:
    from . import plots, results

    out = Path(args.out_dir)
    if len(args.records) == 1 and args.records[0].endswith(".csv"):
        if not Path(args.records[0]).is_file():
            raise DataError(f"runs file not found: {args.records[0]}")
        df = results.read_runs_csv(args.records[0])
    else:
        paths = results.record_paths(args.records)
        if not paths:
            raise DataError(f"no records found in {' '.join(args.records)}")
        df = results.collect(paths)
    written = []
    if "runs" in args.only:
        results.write_runs_csv(df, out / "runs.csv")
        written.append(str(out / "runs.csv"))
    if "tables" in args.only:
        written += map(str, results.write_named_tables(df, out / "tables", args.tables or None))
    if "figures" in args.only:
        analyses = _bottleneck_analyses(args.bottleneck)
        written += map(str, plots.write_figures(df, out / "figures", args.figures, args.formats, bottleneck=analyses))
    _log(f"{len(df)} records -> {len(written)} files in {out}")


COMMANDS = {
    "data": cmd_data,
    "train": cmd_train,
    "prune": cmd_prune,
    "finetune": cmd_finetune,
    "evaluate": cmd_evaluate,
    "measure": cmd_measure,
    "bottleneck": cmd_bottleneck,
    "report": cmd_report,
}


# ---------------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------------
def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb; user errors print ``sosp: error: <one line>`` and exit 2 (no traceback).

    Set ``SOSP_DEBUG=1`` to get the traceback of a user error as well.
    """
    debug = os.environ.get("SOSP_DEBUG", "") not in ("", "0")
    try:
        args = build_parser().parse_args(argv)
        _setup(args)
        COMMANDS[args.verb](args)
    except (SospError, OSError) as exc:
        if debug:
            raise
        message = _one_line(exc)
        if isinstance(exc, OSError) and not isinstance(exc, SospError):
            message = (
                f"{exc.strerror or type(exc).__name__}: {exc.filename or ''}".rstrip(": ") if exc.filename else message
            )
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
