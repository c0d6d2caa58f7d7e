"""Data sets, splits and batch iteration (sosp.data)."""

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sosp import data
from sosp.data import folders, tensors
from sosp.errors import DataError, UnknownNameError

CIFAR_ZIP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.zip"


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


# ------------------------------------------------------------------------------------------ digits


def test_digits_split_sizes_and_shapes(digits):
    assert (len(digits.train), len(digits.val), len(digits.test)) == (1294, 144, 359)
    assert digits.train.x.shape == (1294, 1, 8, 8) and digits.train.x.dtype == torch.float32
    assert digits.train.y.dtype == torch.int64
    assert (digits.num_classes, digits.in_channels, digits.image_size) == (10, 1, 8)
    assert (digits.crop_padding, digits.flip) == (1, False)


def test_digits_normalised_with_training_statistics(digits):
    assert abs(digits.train.x.mean().item()) < 1e-5
    assert abs(digits.train.x.std().item() - 1) < 1e-4
    # fill is where a zero (background) pixel lands, the minimum of the data
    assert torch.isclose(digits.train.fill, digits.train.x.min().reshape(1))


def test_digits_splits_are_stratified(digits):
    total = torch.bincount(torch.cat([digits.train.y, digits.val.y, digits.test.y]), minlength=10).float()
    for split, frac in [(digits.test, 0.2), (digits.val, 0.8 * 0.1)]:
        counts = torch.bincount(split.y, minlength=10).float()
        assert (counts - frac * total).abs().max() <= 1.0


def test_digits_split_is_deterministic_and_test_is_fixed(digits):
    again = data.load("digits")
    assert torch.equal(again.train.x, digits.train.x) and torch.equal(again.val.y, digits.val.y)
    other = data.load("digits", seed=1)
    raw = lambda b, s: s.x * b.std[0] + b.mean[0]  # noqa: E731  (statistics follow the training split)
    assert torch.equal(other.test.y, digits.test.y)  # the test set never moves
    assert torch.allclose(raw(other, other.test), raw(digits, digits.test), atol=1e-5)
    assert not torch.equal(other.val.x, digits.val.x)


def test_train_subset_is_stratified_and_sized():
    b = data.load("digits", train_subset=200)
    assert len(b.train) == 200 and len(b.val) == 144
    assert torch.bincount(b.train.y, minlength=10).min() >= 19


def test_stratified_split_partitions_exactly():
    y = np.repeat(np.arange(3), [7, 5, 1])
    rest, taken = data.stratified_split(y, 0.3, seed=0)
    assert len(taken) == round(0.3 * 13)
    assert sorted(np.concatenate([rest, taken]).tolist()) == list(range(13))


# ------------------------------------------------------------------------------------------ batches


def test_batches_cover_the_split(digits):
    sizes = [len(y) for _, y in data.batches(digits.train, 100)]
    assert sum(sizes) == len(digits.train) and sizes[-1] == len(digits.train) % 100
    assert all(len(y) == 100 for _, y in data.batches(digits.train, 100, drop_last=True))
    ys = torch.cat(
        [y for _, y in data.batches(digits.train, 100, shuffle=True, generator=torch.Generator().manual_seed(0))]
    )
    assert torch.equal(ys.sort().values, digits.train.y.sort().values)


def _collect(split, gen_seed, augment):
    g = torch.Generator().manual_seed(gen_seed)
    return [(x.clone(), y) for x, y in data.batches(split, 64, shuffle=True, generator=g, augment=augment)]


def test_augmentation_keeps_shapes_and_is_deterministic(digits):
    aug = data.Augment(crop_padding=2, flip=True)
    a, b, c = _collect(digits.train, 0, aug), _collect(digits.train, 0, aug), _collect(digits.train, 1, aug)
    assert all(xa.shape == (len(ya), 1, 8, 8) for xa, ya in a)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])
    plain = _collect(digits.train, 0, None)
    assert not torch.equal(a[0][0], plain[0][0])


def test_crop_matches_explicit_padding_and_flip_is_a_mirror():
    x = torch.randn(16, 3, 5, 6)
    fill = torch.tensor([-1.0, -2.0, -3.0])
    g = torch.Generator().manual_seed(3)
    out = tensors._augment(x, fill, data.Augment(crop_padding=2), g)
    g = torch.Generator().manual_seed(3)
    dy, dx = torch.randint(0, 5, (16,), generator=g), torch.randint(0, 5, (16,), generator=g)
    padded = fill[None, :, None, None].repeat(16, 1, 9, 10)
    padded[:, :, 2:7, 2:8] = x
    for i in range(16):
        assert torch.equal(out[i], padded[i, :, dy[i] : dy[i] + 5, dx[i] : dx[i] + 6])
    flipped = tensors._augment(x, fill, data.Augment(crop_padding=0, flip=True), torch.Generator().manual_seed(0))
    is_flip = [torch.equal(flipped[i], x[i].flip(-1)) for i in range(16)]
    assert all(f or torch.equal(flipped[i], x[i]) for i, f in enumerate(is_flip)) and 0 < sum(is_flip) < 16


def test_split_to_device_and_subset(digits):
    s = digits.val.to("cpu").subset([0, 2])
    assert len(s) == 2 and torch.equal(s.x[1], digits.val.x[2])


# ------------------------------------------------------------------------------------------ errors


def test_unknown_dataset_names_known_ones():
    with pytest.raises(UnknownNameError, match="unknown dataset 'mnist'.*cifar10.*digits"):
        data.load("mnist")


def test_missing_cifar_folder_says_where_and_how(tmp_path):
    with pytest.raises(DataError, match=r"cifar-10-batches-py.*download: true"):
        data.load("cifar10", root=tmp_path)
    with pytest.raises(DataError, match="cifar-100-python"):
        data.load("cifar100", root=tmp_path / "nowhere")


def test_corrupt_cifar_folder_is_a_data_error(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(DataError, match="incomplete or corrupted"):
        data.load("cifar10", root=tmp_path)


def test_missing_imagefolder_root_or_split(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "absent")):
        data.load("imagefolder", root=tmp_path / "absent")
    with pytest.raises(DataError, match="needs a root"):
        data.load("imagefolder")
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="train"):
        data.load("imagefolder", root=tmp_path)


# ------------------------------------------------------------------------------------------ folders


def _make_folder(root: Path, size=32, per_class=(6, 3), classes=("cat", "dog")):
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = {}
    for split, n in zip(("train", "test"), per_class):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                path = root / split / c / f"{i:03d}.png"
                Image.fromarray(arr).save(path)
                pixels[path] = arr
    return pixels


def test_imagefolder_in_memory_loads_and_caches(tmp_path):
    pixels = _make_folder(tmp_path)
    b = data.load("imagefolder", root=tmp_path, val_fraction=0.25)
    assert (len(b.train), len(b.val), len(b.test)) == (9, 3, 6)
    assert b.classes == ["cat", "dog"] and (b.num_classes, b.in_channels, b.image_size) == (2, 3, 32)
    assert b.train.x.shape == (9, 3, 32, 32) and b.train.in_memory
    assert (b.crop_padding, b.flip) == (4, True)
    # test images come back in sorted order: un-normalising gives the exact pixels
    mean, std = torch.tensor(b.mean)[:, None, None], torch.tensor(b.std)[:, None, None]
    first = (b.test.x[0] * std + mean) * 255
    expected = torch.from_numpy(pixels[tmp_path / "test" / "cat" / "000.png"]).permute(2, 0, 1).float()
    assert (first - expected).abs().max() < 1e-3
    assert list((tmp_path / ".sosp_cache").glob("*.pt"))
    again = data.load("imagefolder", root=tmp_path, val_fraction=0.25)
    assert torch.equal(again.train.x, b.train.x)


def test_imagefolder_cache_falls_back_to_sosp_cache(tmp_path, monkeypatch):
    root, cache = tmp_path / "images", tmp_path / "cache"
    _make_folder(root, per_class=(2, 1))
    real = folders.write_atomic

    def read_only_root(path, writer):
        if root in Path(path).parents:
            raise PermissionError(f"read-only: {path}")
        real(path, writer)

    monkeypatch.setattr(folders, "write_atomic", read_only_root)
    monkeypatch.setenv("SOSP_CACHE", str(cache))
    b = data.load("imagefolder", root=root, val_fraction=0)
    assert len(list(cache.glob("*.pt"))) == 2 and not list(root.glob(".sosp_cache/*.pt"))
    monkeypatch.setattr(folders, "_decode", None)  # a second load must come from the cache
    assert torch.equal(data.load("imagefolder", root=root, val_fraction=0).train.x, b.train.x)


def test_imagefolder_streamed_at_224(tmp_path):
    _make_folder(tmp_path, size=40, per_class=(4, 2))
    b = data.load("imagefolder", root=tmp_path, image_size=224, val_fraction=0.25)
    assert not b.train.in_memory and (len(b.train), len(b.val), len(b.test)) == (6, 2, 4)
    x, y = next(
        data.batches(
            b.train, 4, shuffle=True, augment=b.augment, num_workers=0, generator=torch.Generator().manual_seed(0)
        )
    )
    assert x.shape == (4, 3, 224, 224) and y.dtype == torch.int64
    x, _ = next(data.batches(b.test, 8, num_workers=0))
    assert x.shape == (4, 3, 224, 224)


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR_ZIP.exists(), reason=f"{CIFAR_ZIP} not present")
def test_cifar10_jpeg_folder(tmp_path):
    with zipfile.ZipFile(CIFAR_ZIP) as z:
        names = [n for n in z.namelist() if n.endswith(".jpg")]
        keep = []
        for split in ("train", "test"):
            for c in {n.split("/")[2] for n in names if n.split("/")[1] == split}:
                keep += sorted(n for n in names if n.split("/")[1:3] == [split, c])[:10]
        z.extractall(tmp_path, members=keep)
    b = data.load("imagefolder", root=tmp_path / "cifar10-jpeg", val_fraction=0.1)
    assert b.num_classes == 10 and "airplane" in b.classes
    assert (len(b.train), len(b.val), len(b.test)) == (90, 10, 100)
    assert b.train.x.shape == (90, 3, 32, 32)
    assert torch.equal(torch.bincount(b.val.y), torch.ones(10, dtype=torch.long))
