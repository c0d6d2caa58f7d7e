"""Shared test settings: one intra-op thread per test worker (pytest-xdist runs one worker per core,
and oversubscribed threads slow small ops by orders of magnitude), offline model hubs."""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402

torch.set_num_threads(1)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def digits_resnet20():
    """``(model, data)``: resnet20 trained on digits with the default budget (about 30 s, once).

    Tests that use it carry ``@pytest.mark.xdist_group("digits_resnet20")`` so one worker trains it.
    """
    from sosp import data, models, train

    bundle = data.load("digits")
    train.seed_everything(0)  # initial weights must not depend on which tests ran before
    model = models.create("resnet20", num_classes=bundle.num_classes, in_channels=bundle.in_channels)
    train.train(model, bundle, train.DEFAULT_DIGITS_CONFIG, seed=0, progress=False)
    return model.eval(), bundle
