"""``sosp <verb>``: the command line that every workflow rule calls, also usable by hand.

Verbs: ``data`` (load/download a data set once), ``weights`` (fetch published weights once), ``train``
(base or widened model), ``base`` (a base model from weights instead of training), ``prune`` (score once,
prune one-shot at one or more ratios), ``finetune``, ``evaluate`` (add test metrics to a record),
``measure`` (add params/MACs/latency to records), ``bottleneck`` (layer-wise pruning ratios -> the
widths of widened networks) and ``report`` (records -> runs.csv, tables, figures). Each verb reads explicit paths, writes its outputs atomically, prints
progress to stderr, and turns every user error into ONE line ``sosp: error: ...`` with exit code 2.

Models are saved with metadata (``meta``): the record so far (``meta["record"]``), the data options
(``meta["data"]``) and the input shape, so later verbs need only the model path; every such default
can be overridden on the command line.

One module per verb holds its arguments (``add_parser``) and its command (``cmd_<verb>``): argument
handling and calls into the library, which does the work. :mod:`.args` holds the parser class and the
arguments that several verbs share, :mod:`.common` what they share at run time. No module imports torch
until a verb runs, so ``sosp --help`` is quick.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from ..errors import SospError
from . import base, bottleneck, data, evaluate, finetune, measure, prune, report, train, weights
from .args import PROG, Parser, UsageError
from .args import positive_int as _positive_int  # noqa: F401  (the name before the CLI became a package)
from .common import setup

__all__ = ["PROG", "UsageError", "COMMANDS", "build_parser", "main"]

#: verb -> its command, in the order ``sosp --help`` lists them
COMMANDS = {
    "data": data.cmd_data,
    "weights": weights.cmd_weights,
    "train": train.cmd_train,
    "base": base.cmd_base,
    "prune": prune.cmd_prune,
    "finetune": finetune.cmd_finetune,
    "evaluate": evaluate.cmd_evaluate,
    "measure": measure.cmd_measure,
    "bottleneck": bottleneck.cmd_bottleneck,
    "report": report.cmd_report,
}
_VERBS = (data, weights, train, base, prune, finetune, evaluate, measure, bottleneck, report)


def _version() -> str:
    from .. import __version__

    return __version__


def build_parser() -> Parser:
    parser = Parser(prog=PROG, description="Structured pruning benchmark (SOSP-H, SOSP-I and baselines).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=Parser)
    for verb in _VERBS:
        verb.add_parser(sub)
    return parser


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
        setup(args)
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
