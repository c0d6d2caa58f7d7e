"""Argument parsing shared by the verbs: the parser class (one-line usage errors), argument types, and
the argument groups that several verbs take (data, run, training recipe, evaluation)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError, SospError, is_positive_int

PROG = "sosp"


class UsageError(SospError):
    """A command-line usage error (argparse)."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (via main), never usage text on stderr
        raise UsageError(
            f"{self.prog.removeprefix(PROG).strip() + ': ' if self.prog != PROG else ''}{message}"
            f" (see '{self.prog} --help')"
        )

    def format_help(self) -> str:
        if callable(self.epilog):  # built when the help is shown (listing the methods imports torch)
            self.epilog = self.epilog()
        return super().format_help()


# ---------------------------------------------------------------------------------------------------
# argument types
# ---------------------------------------------------------------------------------------------------
def ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratio must be a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"ratio must be in [0, 1), got {text}")
    return value


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type; the wording of :func:`sosp.errors.check_positive_int` after argparse's "argument --x:"."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if not is_positive_int(value):
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def parse_value(text: str) -> Any:
    """``3`` -> 3, ``0.5`` -> 0.5, ``true`` -> True, ``[1,2]`` -> [1, 2], ``null`` -> None, else the text."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    low = text.strip().lower()
    if low in ("true", "false", "none", "null"):
        return {"true": True, "false": False}.get(low)
    return text


def key_text(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key.strip().replace("-", "_"), value


def key_value(text: str) -> tuple[str, Any]:
    key, value = key_text(text)
    return key, parse_value(value)


def load_mapping(text: str, what: str) -> dict:
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


# ---------------------------------------------------------------------------------------------------
# argument groups
# ---------------------------------------------------------------------------------------------------
def add_data(p: argparse.ArgumentParser, required: bool) -> None:
    g = p.add_argument_group("data" + ("" if required else " (default: as recorded in the model)"))
    g.add_argument(
        "--dataset", required=required, help="data set name (digits, cifar10, cifar100, imagefolder, imagenet)"
    )
    g.add_argument("--data-root", help="folder holding (or receiving) the data set files")
    g.add_argument("--download", action="store_true", help="download the data set if missing")
    g.add_argument(
        "--val-fraction", type=float, help="fraction of the training split held out for validation (default 0.1)"
    )
    g.add_argument("--train-subset", type=positive_int, help="use only this many training examples")
    g.add_argument("--split-seed", type=int, help="seed of the validation/subset split (default 0)")
    g.add_argument("--image-size", type=positive_int, help="resize images to this size (folder data)")


def add_run(p: argparse.ArgumentParser, seed_default: str = "0") -> None:
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, help=f"random seed (default {seed_default})")
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    g.add_argument("--threads", type=positive_int, help="torch intra-op threads (default: torch's)")
    g.add_argument("--tier", help="tier name stored in the record (default: from the model, else 'adhoc')")
    g.add_argument("--quiet", action="store_true", help="no progress output")


def add_train_config(p: argparse.ArgumentParser, what: str, default: str) -> None:
    g = p.add_argument_group(f"{what} recipe (sosp.train.TrainConfig)")
    g.add_argument(
        "--train-config",
        metavar="JSON|FILE",
        help=f"the full recipe as a JSON object or a JSON/YAML file; the options below override it ({default})",
    )
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=positive_int)
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
    g.add_argument(
        "--nproc",
        type=positive_int,
        default=1,
        metavar="N",
        help="data-parallel processes on this node (DistributedDataParallel, launched as torchrun does): one per "
        "GPU with --device cuda (nccl), else CPU processes (gloo); --batch-size is the global batch (default 1)",
    )


def add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--eval-split",
        default="test",
        choices=("test", "val", "train"),
        help="split for top1/top5/loss in the record (default test)",
    )
    p.add_argument("--eval-batch-size", type=positive_int, default=512)
