"""Datasets for ddmetrics: embedded digits, arrays/npz, image folders and CIFAR-format batches.

>>> from ddmetrics.data import load
>>> splits = load("digits", seed=0)          # train / val / test, normalised with train statistics
>>> splits.train.images.shape                # doctest: +SKIP
torch.Size([1293, 1, 8, 8])
"""
from ._array import ArrayDataset, as_array_dataset, from_arrays, from_npz, stratified_split
from ._cifar import cifar_batches
from ._images import image_folder
from ._load import Splits, load

__all__ = ["ArrayDataset", "Splits", "as_array_dataset", "cifar_batches", "from_arrays", "from_npz",
           "image_folder", "load", "stratified_split"]
