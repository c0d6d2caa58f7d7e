"""Data set registry and fast batch iteration.

Small data sets (digits, CIFAR, image folders at 32x32) are held in memory as one normalised float32
tensor per split; ``batches`` shuffles and augments them with batched tensor ops on the device, so a
CPU epoch costs no per-image Python work and a GPU epoch no host-to-device traffic. ImageNet-size
folders are streamed through a torchvision ``Dataset`` and a ``DataLoader`` instead.

Every partition (test, validation, training subset) is stratified and drawn with a fixed *split*
seed (``load(seed=...)``, default 0) that is independent of the run seed: all runs of a tier see the
same examples, and seeds vary only initialisation, data order and augmentation.

This module holds the registry (:data:`DATASETS`: digits, CIFAR, image folders) and :func:`load`;
:mod:`.tensors` the splits, partitioning and :func:`batches`; :mod:`.folders` image-folder decoding
and streaming.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError, UnknownNameError
from .folders import _load_imagefolder, _load_imagenet
from .tensors import (
    Augment,
    DataBundle,
    Split,
    _channel_stats,
    _normalise,
    _partition,
    _raw_split,
    batches,
    stratified_split,
)

__all__ = ["Split", "DataBundle", "Augment", "DATASETS", "load", "batches", "stratified_split"]

CIFAR_STATS = {  # per-channel mean and std of the training images, in [0, 1] pixel units
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


# ----------------------------------------------------------------------------------------- data sets


def _digits_arrays():
    """The digits table that scikit-learn ships (``datasets/data/digits.csv.gz``), read directly.

    ``load_digits`` returns the same arrays but importing scikit-learn costs over a second, paid by
    every workflow job; reading the file takes a tenth of that. Falls back to ``load_digits``.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if path is not None and path.exists():
        table = np.loadtxt(path, delimiter=",")
        return table[:, :-1], table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data, d.target


def _load_digits(root, download, image_size, **_):
    """scikit-learn's bundled 8x8 digits: no files, no download, instant; the default tier's data."""
    if image_size not in (None, 8):
        raise ConfigError(f"digits images are 8x8; image_size={image_size} is not supported")
    pixels, target = _digits_arrays()
    x = torch.tensor(pixels, dtype=torch.uint8).reshape(-1, 1, 8, 8)  # integer intensities 0..16
    y = torch.tensor(target, dtype=torch.long)
    rest, test_idx = stratified_split(y.numpy(), 0.2, seed=0)  # fixed test set, whatever the seeds
    return dict(
        train=_raw_split(x[rest], y[rest]),
        test=_raw_split(x[test_idx], y[test_idx]),
        scale=16.0,
        num_classes=10,
        classes=[str(i) for i in range(10)],
        image_size=8,
        crop_padding=1,
        flip=False,
    )


def _load_cifar(name: str) -> Callable:
    def loader(root, download, image_size, **_):
        import torchvision

        if image_size not in (None, 32):
            raise ConfigError(f"{name} images are 32x32; image_size={image_size} is not supported")
        root = Path(root if root is not None else "data")
        cls, folder = {
            "cifar10": (torchvision.datasets.CIFAR10, "cifar-10-batches-py"),
            "cifar100": (torchvision.datasets.CIFAR100, "cifar-100-python"),
        }[name]
        if not download and not (root / folder).is_dir():
            raise DataError(
                f"{name} not found: expected the folder {root / folder} (the python version of "
                f"the data set, as torchvision's {cls.__name__} unpacks it) under {root}; put it "
                f"there or set `download: true` to download it"
            )
        try:
            sets = [cls(str(root), train=t, download=download) for t in (True, False)]
        except RuntimeError as e:  # torchvision's "Dataset not found or corrupted"
            raise DataError(
                f"{name} under {root / folder} is incomplete or corrupted ({e}); delete it and set `download: true`"
            ) from e
        mean, std = CIFAR_STATS[name]
        train, test = (_raw_split(torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous(), s.targets) for s in sets)
        return dict(
            train=train,
            test=test,
            num_classes=len(sets[0].classes),
            classes=list(sets[0].classes),
            image_size=32,
            crop_padding=4,
            flip=True,
            mean=mean,
            std=std,
        )

    return loader


DATASETS: dict[str, Callable] = {
    "digits": _load_digits,
    "cifar10": _load_cifar("cifar10"),
    "cifar100": _load_cifar("cifar100"),
    "imagefolder": _load_imagefolder,
    "imagenet": _load_imagenet,
}


def load(
    name: str,
    root=None,
    download: bool = False,
    val_fraction: float = 0.1,
    train_subset: int | None = None,
    seed: int = 0,
    image_size: int | None = None,
) -> DataBundle:
    """Load a registered data set with a stratified validation split carved from its training set.

    ``seed`` is the split seed (validation examples and ``train_subset``), not the run seed.
    ``root``: the data folder (cifar: where torchvision unpacks it, default ``data``; imagefolder and
    imagenet: the folder holding ``train/`` and ``test/`` or ``val/``). ``image_size`` (folders
    only): up to 64 decodes everything into memory (cached as a .pt file), larger streams from disk;
    default 32 for imagefolder, 224 for imagenet. In-memory pixels are normalised with the per-channel
    statistics of the final training split (cifar: the published ones; streamed: ImageNet's).
    """
    if name not in DATASETS:
        raise UnknownNameError("dataset", name, DATASETS)
    parts = DATASETS[name](root=root, download=download, image_size=image_size)
    train, val, test = _partition(parts.pop("train"), parts.pop("test"), val_fraction, train_subset, seed)
    scale = parts.pop("scale", 255.0)
    if train.in_memory:
        if "mean" not in parts:  # statistics of the final training split only, never val or test
            parts["mean"], parts["std"] = _channel_stats(train.x, scale)
        train, val, test = (_normalise(s, parts["mean"], parts["std"], scale) for s in (train, val, test))
    in_channels = train.x.shape[1] if train.in_memory else 3
    return DataBundle(train=train, val=val, test=test, in_channels=in_channels, name=name, **parts)
