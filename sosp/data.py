"""Data set registry and fast batch iteration.

Small data sets (digits, CIFAR, image folders at 32x32) are held in memory as one normalised float32
tensor per split; ``batches`` shuffles and augments them with batched tensor ops on the device, so a
CPU epoch costs no per-image Python work and a GPU epoch no host-to-device traffic. ImageNet-size
folders are streamed through a torchvision ``Dataset`` and a ``DataLoader`` instead.

Every partition (test, validation, training subset) is stratified and drawn with a fixed *split*
seed (``load(seed=...)``, default 0) that is independent of the run seed: all runs of a tier see the
same examples, and seeds vary only initialisation, data order and augmentation.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError, DataError, UnknownNameError
from .io import write_atomic

__all__ = ["Split", "DataBundle", "Augment", "DATASETS", "load", "batches", "stratified_split"]

CIFAR_STATS = {  # per-channel mean and std of the training images, in [0, 1] pixel units
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Augment:
    """Augmentation of an in-memory split: random crop after padding by ``crop_padding`` pixels of
    black (the raw zero pixel), and a random horizontal flip when ``flip``."""

    crop_padding: int = 0
    flip: bool = False


@dataclass
class Split:
    """One split of a data set.

    In memory (``in_memory`` is true): ``x`` (N, C, H, W) float32 normalised, ``y`` (N,) int64, and
    ``fill`` (C,) the normalised value of a black pixel, used as crop padding.
    Streamed (ImageNet-size): ``dataset`` yields evaluation-transformed ``(image, label)`` pairs and
    ``train_dataset`` the same examples with the training augmentation; ``y`` holds the labels and
    ``x``/``fill`` are None.
    """

    x: torch.Tensor | None
    y: torch.Tensor
    fill: torch.Tensor | None = None
    dataset: torch.utils.data.Dataset | None = None
    train_dataset: torch.utils.data.Dataset | None = None

    @property
    def in_memory(self) -> bool:
        return self.x is not None

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device) -> Split:
        """The split with its tensors on ``device`` (a no-op for streamed splits)."""
        if not self.in_memory:
            return self
        return replace(self, x=self.x.to(device), y=self.y.to(device), fill=self.fill.to(device))

    def subset(self, index) -> Split:
        index = torch.as_tensor(index, dtype=torch.long)
        if self.in_memory:
            return replace(self, x=self.x[index.to(self.x.device)], y=self.y[index.to(self.y.device)])
        sub = lambda ds: None if ds is None else torch.utils.data.Subset(ds, index.tolist())  # noqa: E731
        return replace(self, y=self.y[index], dataset=sub(self.dataset), train_dataset=sub(self.train_dataset))


@dataclass
class DataBundle:
    """A loaded data set: three splits, their shape, and how to augment the training split."""

    train: Split
    val: Split
    test: Split
    num_classes: int
    in_channels: int
    image_size: int
    name: str
    crop_padding: int = 0
    flip: bool = False
    classes: list[str] = field(default_factory=list)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    @property
    def augment(self) -> Augment:
        return Augment(self.crop_padding, self.flip)

    @property
    def example_input(self) -> torch.Tensor:
        """A batch of two training inputs (for tracing the model graph)."""
        if self.train.in_memory:
            return self.train.x[:2].clone()
        return torch.stack([self.train.dataset[i][0] for i in range(min(2, len(self.train)))])


# ----------------------------------------------------------------------------------------- splitting


def stratified_split(y, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, taken) with ``round(fraction * n)`` taken, every class in proportion.

    Classes get ``floor`` of their share, and the remainder goes to the largest fractional parts, so
    totals are exact and tiny data sets (fewer examples than classes in the taken part) still work.
    """
    y = np.asarray(y)
    n = len(y)
    k = int(round(fraction * n))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    share = counts * (k / n) if n else counts * 0.0
    take = np.floor(share).astype(int)
    order = np.lexsort((classes, -(share - take)))  # largest remainder first, ties by class
    take[order[: k - take.sum()]] += 1
    taken = [rng.permutation(np.flatnonzero(y == c))[:t] for c, t in zip(classes, take)]
    taken = np.sort(np.concatenate(taken)) if taken else np.zeros(0, dtype=int)
    rest = np.setdiff1d(np.arange(n), taken)
    return rest, taken


def _partition(train: Split, test: Split, val_fraction: float, train_subset: int | None, seed: int):
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rest, val_idx = stratified_split(train.y.numpy(), val_fraction, seed)
    if train_subset is not None:
        if int(train_subset) < 1:
            raise ConfigError(f"train_subset must be a positive number of examples, got {train_subset}")
        if train_subset < len(rest):
            _, keep = stratified_split(train.y.numpy()[rest], train_subset / len(rest), seed)
            rest = rest[keep]
    return train.subset(rest), train.subset(val_idx), test


def _raw_split(images_uint8: torch.Tensor, labels) -> Split:
    """An un-normalised in-memory split: (N, C, H, W) uint8 pixels and labels."""
    return Split(x=images_uint8, y=torch.as_tensor(labels, dtype=torch.long))


def _channel_stats(x_uint8: torch.Tensor, scale: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of uint8 pixels / scale, via histograms (no float copy)."""
    values = torch.arange(256, dtype=torch.float64) / scale
    mean, std = [], []
    for c in range(x_uint8.shape[1]):
        h = torch.bincount(x_uint8[:, c].reshape(-1), minlength=256).double()
        m = (h * values).sum() / h.sum()
        mean.append(m.item())
        std.append(((h * (values - m) ** 2).sum() / (h.sum() - 1)).sqrt().item())
    return tuple(mean), tuple(std)


def _normalise(split: Split, mean, std, scale: float) -> Split:
    """uint8 pixels -> float32 ``(x / scale - mean) / std``; ``fill`` is where a zero pixel lands."""
    mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(std, dtype=torch.float32)[:, None, None]
    x = split.x.float().div_(scale).sub_(mean).div_(std)
    return replace(split, x=x, fill=(-mean / std).flatten())


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


def _folder_samples(folder: Path, classes: Sequence[str] | None = None):
    """(paths, labels, classes) of an ImageFolder-style tree ``folder/<class>/*``."""
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder} (expected {folder}/<class name>/<images>)")
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    classes = list(classes) if classes is not None else found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"{folder} has class folders missing from the training set: {', '.join(unknown)}")
    paths, labels = [], []
    for label, c in enumerate(classes):
        if (folder / c).is_dir():
            files = sorted(
                e.path for e in os.scandir(folder / c) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
            )
            paths += files
            labels += [label] * len(files)
    if not paths:
        raise DataError(f"no images found under {folder} (expected {folder}/<class name>/<images>)")
    return paths, labels, classes


def _decode(path: str, size: int) -> np.ndarray:
    """One image as (size, size, 3) uint8; shorter side resized to ``size`` then centre-cropped.

    PIL releases the GIL while decoding, so a thread pool decodes in parallel (torchvision's own
    decoders are deprecated in favour of TorchCodec, which is not a dependency)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            w, h = im.size
            scale = size / min(w, h)
            im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
            left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
            im = im.crop((left, top, left + size, top + size))
        return np.asarray(im)


def _cache_dirs(root: Path) -> list[Path]:
    dirs = [root / ".sosp_cache"]
    if os.environ.get("SOSP_CACHE"):
        dirs.append(Path(os.environ["SOSP_CACHE"]))
    return dirs + [Path.home() / ".cache" / "sosp"]


def _decode_all(root: Path, paths: list[str], size: int) -> torch.Tensor:
    """Decode every image once (thread pool) and cache the uint8 tensor keyed by the file list."""
    key = hashlib.sha256(f"{size}\n".encode())
    for p in paths:
        st = os.stat(p)
        key.update(f"{os.path.relpath(p, root)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    name = f"images-{size}-{key.hexdigest()[:20]}.pt"
    for d in _cache_dirs(root):
        if (d / name).is_file():
            try:
                return torch.load(d / name, weights_only=True)
            except Exception:  # a damaged cache is rebuilt, never trusted
                pass
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) * 2)) as pool:
        images = torch.from_numpy(np.stack(list(pool.map(lambda p: _decode(p, size), paths))))
    images = images.permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)
    _log.info("decoded %d images under %s in %.1f s", len(paths), root, time.perf_counter() - t0)
    for d in _cache_dirs(root):
        try:
            d.mkdir(parents=True, exist_ok=True)
            write_atomic(d / name, lambda tmp: torch.save(images, tmp))
            _log.info("cached them as %s", d / name)
            break
        except OSError:  # read-only: try the next cache location
            continue
    return images


def _load_imagefolder(root, download, image_size, *, test_folders=("test", "val"), name="imagefolder", **_):
    """``root/train/<class>/*`` and ``root/test/<class>/*`` (or ``val``): 32 in memory, 224 streamed."""
    if root is None:
        raise DataError(f"{name} needs a root folder holding train/ and {' or '.join(test_folders)}/")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{name} root folder not found: {root}")
    size = int(image_size or 32)
    test_dir = next((root / t for t in test_folders if (root / t).is_dir()), root / test_folders[0])
    if size > 64:  # ImageNet-size: stream from disk (one folder scan per split, by torchvision)
        train = _streamed(root / "train", size, True)
        classes = train.dataset.classes
        return dict(
            train=train,
            test=_streamed(test_dir, size, False, classes),
            num_classes=len(classes),
            classes=classes,
            image_size=size,
            crop_padding=0,
            flip=True,
            mean=IMAGENET_STATS[0],
            std=IMAGENET_STATS[1],
        )
    train_paths, train_labels, classes = _folder_samples(root / "train")
    test_paths, test_labels, _ = _folder_samples(test_dir, classes)
    return dict(
        train=_raw_split(_decode_all(root, train_paths, size), train_labels),
        test=_raw_split(_decode_all(root, test_paths, size), test_labels),
        num_classes=len(classes),
        classes=classes,
        image_size=size,
        crop_padding=max(1, size // 8),
        flip=True,
    )  # mean/std: from the final training split


def _streamed(folder: Path, size: int, with_train: bool, classes=None) -> Split:
    """A streamed split: standard ImageNet transforms (RandomResizedCrop + flip for training; resize to
    ``size * 8 / 7`` and centre crop for evaluation) on one scan of the folder."""
    import torchvision
    from torchvision import transforms as T

    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder} (expected {folder}/<class name>/<images>)")
    norm = [T.ToTensor(), T.Normalize(*IMAGENET_STATS)]
    eval_tf = T.Compose([T.Resize(round(size * 8 / 7)), T.CenterCrop(size)] + norm)
    try:
        ds = torchvision.datasets.ImageFolder(str(folder), transform=eval_tf)
    except (FileNotFoundError, OSError) as e:  # no class folders, or a class without images
        raise DataError(f"cannot read image folder {folder}: {e}") from e
    unknown = sorted(set(ds.classes) - set(classes or ds.classes))
    if unknown:
        raise DataError(f"{folder} has class folders missing from the training set: {', '.join(unknown)}")
    if classes is not None and ds.classes != list(classes):  # test folder missing a class: relabel
        ds.class_to_idx = {c: i for i, c in enumerate(classes)}
        ds.samples = [(p, ds.class_to_idx[Path(p).parent.name]) for p, _ in ds.samples]
        ds.targets = [t for _, t in ds.samples]
        ds.classes = list(classes)
    train_ds = None
    if with_train:
        train_ds = copy.copy(ds)
        train_ds.transform = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip()] + norm)
    return Split(x=None, y=torch.tensor(ds.targets, dtype=torch.long), dataset=ds, train_dataset=train_ds)


def _load_imagenet(root, download, image_size, **kw):
    return _load_imagefolder(root, download, image_size or 224, test_folders=("val", "test"), name="imagenet")


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


# ----------------------------------------------------------------------------------------- batches


def batches(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    augment: Augment | None = None,
    device="cpu",
    drop_last: bool = False,
    num_workers: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` batches on ``device``.

    In-memory splits: the split is moved to ``device`` once (a no-op when it is already there); order
    comes from ``torch.randperm(generator=...)`` and augmentation random numbers from ``generator``
    too (drawn on the CPU, so a CPU generator serves every device), so the same generator state gives
    the same batches. Streamed splits: a ``DataLoader`` (``num_workers`` for streamed splits only);
    a truthy ``augment`` selects the split's training transform.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    if not split.in_memory:
        yield from _stream_batches(split, batch_size, shuffle, generator, augment, device, drop_last, num_workers)
        return
    split = split.to(device)
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    augment = augment if augment and (augment.crop_padding or augment.flip) else None
    for start in range(0, stop, batch_size):
        if order is None:
            x, y = split.x[start : start + batch_size], split.y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size].to(split.x.device, non_blocking=True)
            x, y = split.x[idx], split.y[idx]
        if augment is not None:
            x = _augment(x, split.fill, augment, generator)
        yield x, y


def _augment(x: torch.Tensor, fill: torch.Tensor, aug: Augment, generator) -> torch.Tensor:
    """Random crop with black padding and random flip of a batch, as one gather (no padded copy)."""
    b, c, h, w = x.shape
    p = aug.crop_padding
    dy = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(x.device) - p
    dx = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(x.device) - p
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (B, H) source row of each output row
    cols = torch.arange(w, device=x.device).expand(b, w)
    if aug.flip:
        flip = torch.rand(b, generator=generator).to(x.device) < 0.5
        cols = torch.where(flip[:, None], w - 1 - cols, cols)
    cols = cols + dx[:, None]
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]  # (B, H, W)
    rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    out = x[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]
    return torch.where(inside[:, None], out, fill.to(x.dtype)[None, :, None, None])


def _stream_batches(split, batch_size, shuffle, generator, augment, device, drop_last, num_workers):
    ds = split.train_dataset if augment and split.train_dataset is not None else split.dataset
    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=torch.device(device).type == "cuda",
        persistent_workers=False,
    )
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
