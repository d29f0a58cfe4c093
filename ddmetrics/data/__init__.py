"""Datasets for ddmetrics: embedded digits, arrays/npz, image folders and CIFAR-format batches.

Everything the pipeline reads is an :class:`ImageDataset`: labels in memory, images read by
index in batches (``load``). :class:`ArrayDataset` holds its images in memory;
:class:`ImageFolder` decodes a folder's files on access, so ImageNet-size folders stream.

>>> from ddmetrics.data import load
>>> splits = load("digits", seed=0)          # train / val / test, normalised with train statistics
>>> splits.train.images.shape                # doctest: +SKIP
torch.Size([1293, 1, 8, 8])
"""
from ._base import ImageDataset, iterate_on_cpu, pixel_bounds, read_batches
from ._array import ArrayDataset, as_array_dataset, as_dataset, from_arrays, from_npz, stratified_split
from ._cifar import cifar_batches
from ._images import ImageFolder, image_folder
from ._load import Splits, check_source, load
from ._streamed import StreamedDataset

__all__ = ["ArrayDataset", "ImageDataset", "ImageFolder", "Splits", "StreamedDataset", "as_array_dataset",
           "as_dataset", "check_source", "cifar_batches", "from_arrays", "from_npz", "image_folder", "iterate_on_cpu", "load",
           "pixel_bounds", "read_batches", "stratified_split"]
