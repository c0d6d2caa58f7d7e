"""In-memory and streamed splits, the loaded data set (:class:`DataBundle`), stratified partitioning
and normalisation, and fast batch iteration with on-device augmentation."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..errors import ConfigError


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
