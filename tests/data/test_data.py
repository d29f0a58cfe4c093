"""Tests for ddmetrics.data: splits, array/npz/image-folder/CIFAR loaders, safe unpickling."""
import os
import pickle

import numpy as np
import pytest
import torch

from ddmetrics.data import (ArrayDataset, Splits, as_array_dataset, cifar_batches, from_arrays, from_npz,
                            image_folder, load, stratified_split)


@pytest.fixture(scope="module")
def digits():
    return load("digits", seed=0)


def _rows(ds):
    """Each image as a hashable byte string (digits images are unique enough to identify samples)."""
    return [x.numpy().tobytes() for x in ds.images]


def test_digits_shapes_and_types(digits):
    assert isinstance(digits, Splits)
    assert digits.num_classes == 10
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    assert digits.train.image_shape == (1, 8, 8)
    assert digits.train.images.dtype == torch.float32 and digits.train.labels.dtype == torch.int64
    assert digits.mean.shape == (1,) and digits.std.shape == (1,)


def test_digits_splits_disjoint(digits):
    # compare on raw sample identity via denormalised pixels + label
    def keys(ds):
        raw = torch.round(digits.denormalize(ds.images) * 16).to(torch.int64)
        return [(r.numpy().tobytes(), int(y)) for r, y in zip(raw, ds.labels)]

    from collections import Counter
    from sklearn.datasets import load_digits

    d = load_digits()
    everything = Counter((torch.from_numpy(img.astype(np.int64))[None].numpy().tobytes(), int(y))
                         for img, y in zip(d.images, d.target))
    union = Counter(keys(digits.train)) + Counter(keys(digits.val)) + Counter(keys(digits.test))
    assert union == everything  # a partition: nothing lost, nothing duplicated


def test_digits_stratified(digits):
    from sklearn.datasets import load_digits

    n_k = np.bincount(load_digits().target, minlength=10)
    tr, va, te = (np.bincount(s.labels.numpy(), minlength=10) for s in (digits.train, digits.val, digits.test))
    assert (tr > 0).all() and (va > 0).all() and (te > 0).all()
    assert np.all(np.abs(te - 0.2 * n_k) <= 2)
    assert np.all(np.abs(va - 0.1 * 0.8 * n_k) <= 2)
    assert np.all(np.abs(tr - 0.9 * 0.8 * n_k) <= 2)


def test_digits_normalised_with_train_stats(digits):
    x = digits.train.images
    assert abs(float(x.mean())) < 1e-4
    assert abs(float(x.std(unbiased=False)) - 1.0) < 1e-4
    # val/test use the train statistics, so they are not exactly standardised themselves
    assert abs(float(digits.test.images.mean())) > 1e-6
    # statistics are in [0, 1] pixel units
    assert 0.0 < float(digits.mean) < 1.0 and 0.0 < float(digits.std) < 1.0


def test_digits_seeded(digits):
    again = load("digits", seed=0)
    assert torch.equal(again.train.images, digits.train.images)
    assert torch.equal(again.test.labels, digits.test.labels)
    other = load("digits", seed=1)
    assert _rows(other.test) != _rows(digits.test)


def test_stratified_split_fraction_and_validation():
    ds = ArrayDataset(torch.zeros(30, 1, 2, 2), torch.arange(30) % 3, 3)
    rest, held = stratified_split(ds, 0.2, seed=0)
    assert len(held) == 6 and len(rest) == 24
    assert torch.equal(torch.bincount(held.labels, minlength=3), torch.tensor([2, 2, 2]))
    with pytest.raises(ValueError, match="fraction"):
        stratified_split(ds, 1.5, seed=0)


@pytest.mark.parametrize("shape, expected", [
    ((5, 8, 8), (5, 1, 8, 8)),             # (N, H, W) -> channel added
    ((5, 3, 8, 8), (5, 3, 8, 8)),          # channels first
    ((5, 8, 8, 3), (5, 3, 8, 8)),          # channels last
    ((5, 8, 8, 1), (5, 1, 8, 8)),          # channels last, grayscale
    ((5, 3, 8, 3), (5, 3, 8, 3)),          # ambiguous -> channels first
])
def test_from_arrays_shape_rules(shape, expected):
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    ds = from_arrays(x, np.zeros(shape[0], dtype=np.int64))
    assert tuple(ds.images.shape) == expected
    if shape[-1] == 3 and shape[1] != 3:
        assert torch.equal(ds.images, torch.from_numpy(x).permute(0, 3, 1, 2))


def test_from_arrays_uint8_scaled_and_torch_input():
    x = torch.full((2, 1, 2, 2), 255, dtype=torch.uint8)
    ds = from_arrays(x, torch.tensor([0, 1]))
    assert torch.allclose(ds.images, torch.ones(2, 1, 2, 2))
    assert ds.num_classes == 2 and ds[1][1] == 1 and isinstance(ds[1][1], int)


def test_validation_errors():
    x = np.zeros((3, 1, 4, 4), dtype=np.float32)
    x[1, 0, 2, 2] = np.nan
    with pytest.raises(ValueError, match="images"):
        from_arrays(x, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="labels"):
        from_arrays(np.zeros((3, 4, 4), np.float32), np.array([0, 1, 5]), num_classes=3)
    with pytest.raises(ValueError, match="labels"):
        ArrayDataset(torch.zeros(3, 1, 4, 4), torch.tensor([0, -1, 1]), 2)
    with pytest.raises(ValueError, match="labels"):
        ArrayDataset(torch.zeros(3, 1, 4, 4), torch.tensor([0, 1]), 2)
    with pytest.raises(ValueError, match="images"):
        ArrayDataset(torch.zeros(3, 4, 4), torch.tensor([0, 1, 1]), 2)


def test_class_indices_subset_and_as_array_dataset():
    ds = ArrayDataset(torch.arange(8.0).view(4, 1, 1, 2), torch.tensor([1, 0, 1, 0]), 2)
    assert torch.equal(ds.class_indices(1), torch.tensor([0, 2]))
    sub = ds.subset(ds.class_indices(0))
    assert torch.equal(sub.labels, torch.tensor([0, 0])) and sub.num_classes == 2
    assert as_array_dataset(ds) is ds
    plain = torch.utils.data.TensorDataset(ds.images, ds.labels)
    conv = as_array_dataset(plain, num_classes=3)
    assert conv.num_classes == 3 and torch.equal(conv.images, ds.images)


def test_from_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(6, 5, 5, 3), dtype=np.uint8)
    y = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "a.npz", x=x, y=y)
    ds = from_npz(tmp_path / "a.npz")
    assert torch.allclose(ds.images, torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255)
    assert torch.equal(ds.labels, torch.from_numpy(y))
    np.savez(tmp_path / "b.npz", images=x[..., 0], labels=y)
    assert from_npz(tmp_path / "b.npz").image_shape == (1, 5, 5)
    np.savez(tmp_path / "bad.npz", foo=x)
    with pytest.raises(ValueError):
        from_npz(tmp_path / "bad.npz")
    splits = load(str(tmp_path / "a.npz"), seed=0, val_fraction=0.0, test_fraction=0.34)
    assert len(splits.train) + len(splits.test) == 6 and len(splits.val) == 0


def test_image_folder(tmp_path):
    from PIL import Image

    colours = {"cat": (255, 0, 0), "ant": (0, 0, 255)}
    for name, rgb in colours.items():
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (10, 12), rgb).save(tmp_path / name / f"{i}.png")
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    ds = image_folder(tmp_path, size=6)
    assert ds.class_names == ["ant", "cat"]
    assert tuple(ds.images.shape) == (6, 3, 6, 6)
    assert torch.equal(ds.labels, torch.tensor([0, 0, 0, 1, 1, 1]))
    assert torch.allclose(ds.images[0, 2], torch.ones(6, 6)) and torch.allclose(ds.images[3, 0], torch.ones(6, 6))
    assert float(ds.images[0, 0].abs().max()) == 0.0
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        image_folder(tmp_path, size=6)


def test_image_folder_grayscale(tmp_path):
    from PIL import Image

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.new("L", (4, 4), 128).save(tmp_path / name / "x.png")
    ds = image_folder(tmp_path, size=4)
    assert ds.image_shape == (1, 4, 4)
    with pytest.raises(ValueError):
        image_folder(tmp_path / "a", size=4)  # no class sub-folders


def _write_cifar10(root, n_per_batch=4, batches=2):
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for b in range(1, batches + 1):
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n_per_batch)]
        with open(root / f"data_batch_{b}", "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"training batch"}, f)
        xs.append(data)
        ys += labels
    test = rng.integers(0, 256, size=(3, 3072), dtype=np.uint8)
    with open(root / "test_batch", "wb") as f:
        pickle.dump({"data": test, "labels": [1, 2, 3]}, f)  # str keys are accepted too
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return np.concatenate(xs), np.array(ys), test


def test_cifar_batches_exact_pixels(tmp_path):
    x, y, test = _write_cifar10(tmp_path)
    ds = cifar_batches(tmp_path, train=True)
    assert tuple(ds.images.shape) == (8, 3, 32, 32) and ds.num_classes == 10
    assert torch.equal(torch.round(ds.images * 255).to(torch.uint8), torch.from_numpy(x.reshape(8, 3, 32, 32)))
    assert torch.equal(ds.labels, torch.from_numpy(y))
    assert ds.class_names[3] == "c3"
    te = cifar_batches(tmp_path, train=False)
    assert torch.equal(te.labels, torch.tensor([1, 2, 3]))
    assert torch.equal(torch.round(te.images * 255).to(torch.uint8), torch.from_numpy(test.reshape(3, 3, 32, 32)))
    splits = load(str(tmp_path), seed=0)
    assert len(splits.test) == 3 and len(splits.train) + len(splits.val) == 8


def test_cifar100_layout(tmp_path):
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    with open(tmp_path / "train", "wb") as f:
        pickle.dump({b"data": data, b"fine_labels": [5, 99], b"coarse_labels": [1, 2]}, f)
    ds = cifar_batches(tmp_path)
    assert ds.num_classes == 100 and torch.equal(ds.labels, torch.tensor([5, 99]))


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _EvilEval:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (eval, (f"open({self.target!r}, 'w').close()",))


@pytest.mark.parametrize("evil", [_Evil, _EvilEval])
def test_cifar_malicious_pickle_refused(tmp_path, evil):
    root = tmp_path / "cifar"
    root.mkdir()
    marker = tmp_path / "PWNED"
    with open(root / "data_batch_1", "wb") as f:
        pickle.dump({b"data": evil(str(marker)), b"labels": [0]}, f)
    with pytest.raises((pickle.UnpicklingError, ValueError)):
        cifar_batches(root)
    assert not marker.exists()
