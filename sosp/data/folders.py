"""Image-folder data sets (``root/train/<class>/*``, ``root/test/<class>/*`` or ``val``): small images are
decoded once into memory (in parallel, cached as a .pt file keyed by the file list), ImageNet-size
ones are streamed through a torchvision ``ImageFolder`` with the standard transforms."""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..io import write_atomic
from .tensors import Split, _raw_split

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_log = logging.getLogger(__name__)


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
