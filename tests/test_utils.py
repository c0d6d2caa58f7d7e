"""The shared helpers: train/eval mode for a block, the positive-integer check, progress bars."""

import argparse
import io
import sys

import pytest
import torch.nn as nn

from sosp import cli, utils
from sosp.errors import ConfigError, check_positive_int


def _modes(model):
    return [m.training for m in model.modules()]


@pytest.mark.parametrize("helper, inside", [(utils.eval_mode, False), (lambda m: utils.train_mode(m), True)])
def test_mode_helpers_restore_every_submodules_own_mode(helper, inside):
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Dropout())
    model[1].eval()  # a frozen BatchNorm inside a training model
    before = _modes(model)
    assert before == [True, True, False, True]
    with helper(model):
        assert _modes(model) == [inside] * 4
    assert _modes(model) == before
    with pytest.raises(RuntimeError), helper(model):
        raise RuntimeError
    assert _modes(model) == before


def test_check_positive_int():
    assert check_positive_int("steps", 3) == 3
    for bad in (0, -1, True, 2.0, "3", None):
        with pytest.raises(ConfigError, match=r"^steps must be a positive integer, got "):
            check_positive_int("steps", bad)
    assert cli._positive_int("4") == 4
    for bad in ("0", "-2", "x", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"^must be a positive integer, got '{bad}'$"):
            cli._positive_int(bad)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize(
    "stream, enabled, switched_on, shown",
    [
        (io.StringIO, True, True, False),  # a log file or pipe: nothing
        (_Terminal, True, True, True),
        (_Terminal, False, True, False),
        (_Terminal, True, False, False),  # the CLI's --quiet
    ],
)
def test_progress_shows_on_a_terminal_only(monkeypatch, stream, enabled, switched_on, shown):
    err = stream()
    monkeypatch.setattr(sys, "stderr", err)
    utils.show_progress(switched_on)
    try:
        assert list(utils.progress(range(3), "scoring x", enabled=enabled)) == [0, 1, 2]
    finally:
        utils.show_progress(True)
    assert ("scoring x" in err.getvalue()) == shown
