"""Small helpers shared across the suite: model train/eval mode for a block, and progress bars.

Imports nothing from ``sosp`` (every module may import it), and neither torch nor tqdm until used,
so the command line stays quick to start.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

__all__ = ["train_mode", "eval_mode", "progress", "show_progress"]


@contextlib.contextmanager
def train_mode(model: nn.Module, mode: bool = True) -> Iterator[nn.Module]:
    """``model.train(mode)`` for the duration, then every submodule's own previous mode (they may differ)."""
    modes = [(m, m.training) for m in model.modules()]
    model.train(mode)
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def eval_mode(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """Eval mode for the duration, then every submodule's own previous mode."""
    return train_mode(model, False)


_SHOW_PROGRESS = True


def show_progress(enabled: bool) -> None:
    """Switch every progress bar of the suite on (the default; shown on a terminal only) or off
    (the CLI's ``--quiet``)."""
    global _SHOW_PROGRESS
    _SHOW_PROGRESS = bool(enabled)


def progress(
    iterable: Iterable | None = None,
    desc: str | None = None,
    total: int | None = None,
    *,
    enabled: bool = True,
    **options,
):
    """A tqdm bar on stderr, the one kind of live progress in the suite (training steps, scoring batches).

    Shown only when stderr is a terminal (``disable=None``): a log file, a pipe or pytest's capture
    gets nothing, so logs hold only the line-per-event messages. Redrawn at most twice a second and
    erased when done (``leave=False``) unless ``options`` say otherwise. Off when ``enabled`` is false
    or after ``show_progress(False)``.
    """
    from tqdm import tqdm

    options = {"leave": False, "mininterval": 0.5, "dynamic_ncols": True, **options}
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        file=sys.stderr,
        disable=None if enabled and _SHOW_PROGRESS else True,
        **options,
    )
