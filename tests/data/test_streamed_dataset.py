"""Any map-style Dataset is streamed, never materialised (issue 25, item 1).

torchvision cannot be installed here: its datasets are stood in for by a Dataset with the same
surface (``targets``, ``classes``, ``__getitem__`` returning a PIL image, or a tensor after a
transform, and an int), which counts the items it is asked for.
"""
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset, Subset

import ddmetrics as ddm
from ddmetrics.data import ArrayDataset, StreamedDataset, as_dataset, pixel_bounds, stratified_split


class FakeVisionDataset(Dataset):
    """torchvision-like: ``targets``, ``classes``; item i is (PIL RGB image or its tensor, int)."""

    def __init__(self, n, classes=3, size=8, tensor=False, declare_targets=True, target_transform=None):
        self.n, self.size, self.tensor = n, size, tensor
        self.classes = [f"class{k}" for k in range(classes)]
        if declare_targets:
            self.targets = [i % classes for i in range(n)]
        self.target_transform = target_transform
        self.reads = []

    def pixels(self, i):
        return np.random.default_rng(i).integers(0, 256, size=(self.size, self.size, 3), dtype=np.uint8)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.reads.append(int(i))
        a = self.pixels(i)
        img = torch.from_numpy(a.transpose(2, 0, 1).copy()).float() / 255 if self.tensor else Image.fromarray(a)
        y = i % len(self.classes)
        return img, (self.target_transform(y) if self.target_transform else y)


def test_labels_come_from_targets_without_reading_items():
    ds = FakeVisionDataset(30)
    s = as_dataset(ds)
    assert isinstance(s, StreamedDataset)
    assert ds.reads == [0]  # one item, for the image shape
    assert s.labels.tolist() == ds.targets and s.class_names == ds.classes and s.num_classes == 3
    assert s.image_shape == (3, 8, 8)
    # through Subset and ConcatDataset too
    sub = as_dataset(Subset(ds, [5, 7, 9]))
    assert sub.labels.tolist() == [2, 1, 0] and ds.reads == [0, 5]
    both = as_dataset(ConcatDataset([ds, FakeVisionDataset(4)]))
    assert both.labels.tolist() == ds.targets + [0, 1, 2, 0]


def test_labels_without_targets_or_with_a_target_transform_are_read_from_the_items():
    ds = FakeVisionDataset(12, declare_targets=False)
    assert as_dataset(ds).labels.tolist() == [i % 3 for i in range(12)]
    # a target_transform changes what the items say: targets are not trusted
    shifted = FakeVisionDataset(12, target_transform=lambda y: 2 - y)
    assert as_dataset(shifted).labels.tolist() == [2 - i % 3 for i in range(12)]


def test_pil_images_read_as_to_tensor_does_and_tensors_as_they_are():
    ds = FakeVisionDataset(6)
    s = as_dataset(ds)
    x = s.load([4, 1])
    for row, i in zip(x, (4, 1)):  # ToTensor: HWC uint8 -> CHW / 255
        assert torch.equal(row, torch.from_numpy(ds.pixels(i).transpose(2, 0, 1).copy()).float() / 255)
    t = as_dataset(FakeVisionDataset(6, tensor=True))
    assert torch.equal(t.load([4, 1]), x)
    # a streamed set's pixel range is its images' per-channel min / max, as an in-memory set's
    full = ArrayDataset(t.load(range(6)), t.labels, 3)
    for a, b in zip(pixel_bounds(t), pixel_bounds(full)):
        assert torch.equal(a, b)


def test_images_of_another_shape_are_refused_naming_the_item():
    class Ragged(FakeVisionDataset):
        def __getitem__(self, i):
            img, y = super().__getitem__(i)
            return (img.resize((9, 9)) if i == 3 else img), y

    s = as_dataset(Ragged(6))
    with pytest.raises(ValueError, match=r"dataset\[3\]'s image has shape \(3, 9, 9\), the first one \(3, 8, 8\)"):
        s.load([2, 3])


def test_split_subsets_read_nothing():
    ds = FakeVisionDataset(40)
    rest, held = stratified_split(ds, 0.25, seed=0)
    assert isinstance(rest, StreamedDataset) and ds.reads == [0]
    # round(0.25 * 14) of class 0, round(0.25 * 13) of the others
    assert len(rest) + len(held) == 40 and torch.bincount(held.labels).tolist() == [4, 3, 3]
    i = int(held.class_indices(1)[0])
    assert torch.equal(held[i][0], as_dataset(ds)[int(held._rows[i])][0])


def test_fit_streams_a_generic_dataset_and_matches_the_in_memory_run():
    """fit reads only the batches it uses (the old code read every item into memory first), and
    gives the same synthetic set as on the same images held in memory."""
    torch.set_num_threads(1)
    ds = FakeVisionDataset(300, size=8)
    distiller = ddm.Distiller(method="dm", ipc=1, seed=0, iterations=2, batch_real=8, device="cpu")
    syn = distiller.fit(ds, progress=False)
    # per class: one image to start from, then batch_real images per iteration (+ the shape probe,
    # the checkpoint-free run needs no fingerprint)
    assert len(ds.reads) <= 1 + 3 * (1 + 2 * 8) < len(ds)
    memory = ArrayDataset(as_dataset(FakeVisionDataset(300, size=8)).load(range(300)), torch.tensor(ds.targets), 3)
    again = ddm.Distiller(method="dm", ipc=1, seed=0, iterations=2, batch_real=8, device="cpu").fit(memory,
                                                                                                  progress=False)
    assert torch.equal(syn.images, again.images)  # the same reads in the same order: bit equality


def test_evaluate_streams_a_generic_test_set():
    torch.set_num_threads(1)
    test = FakeVisionDataset(200, size=8)
    images = torch.zeros(3, 3, 8, 8)
    syn = ddm.SyntheticSet(images=images, labels=torch.arange(3), weights=torch.ones(3), num_classes=3,
                           meta={"method": "dm", "ipc": 1})
    report = ddm.evaluate(syn, test, runs=1, epochs=1, model="convnet", progress=False, device="cpu")
    assert len(report.runs) == 1
    assert sorted(set(test.reads)) == list(range(200))  # the test set is read for accuracy, batch by batch
    assert test.reads.count(0) == 2  # the shape probe, then its batch: no second pass for labels
