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


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """``make(size, classes, train_per_class, test_per_class, test_classes=None) -> Path``: a generated
    image folder (``train/<class>/*``, ``test/<class>/*``) of ``size`` x ``size`` images, one per
    arguments and session (cached). Each class has its own mean colour plus pixel noise, so training is
    not degenerate; PNG up to 64 pixels, JPEG above (ImageNet-size folders are streamed from JPEGs).
    ``test_classes`` (default: all) limits the test folder to the first classes (a test folder may lack
    classes; ImageNet-size runs evaluate every model, so its test folder is kept small)."""
    import numpy as np
    from PIL import Image

    made: dict[tuple, object] = {}

    def make(size: int, classes: int, train_per_class: int, test_per_class: int, test_classes: int | None = None):
        key = (size, classes, train_per_class, test_per_class, test_classes)
        if key in made:
            return made[key]
        root = tmp_path_factory.mktemp(f"images{size}_{classes}c")
        rng = np.random.default_rng(0)
        colours = rng.integers(40, 216, (classes, 3))
        ext = "png" if size <= 64 else "jpg"
        for split, per_class, n_classes in (
            ("train", train_per_class, classes),
            ("test", test_per_class, test_classes or classes),
        ):
            for c in range(n_classes):
                folder = root / split / f"c{c:04d}"
                folder.mkdir(parents=True)
                for i in range(per_class):
                    noise = rng.integers(-40, 41, (size, size, 3))
                    pixels = np.clip(colours[c] + noise, 0, 255).astype(np.uint8)
                    Image.fromarray(pixels).save(folder / f"{i:03d}.{ext}")
        made[key] = root
        return root

    return make
