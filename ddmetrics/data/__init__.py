"""Datasets for ddmetrics: embedded digits, arrays/npz, image folders, official dataset files, any Dataset.

Everything the pipeline reads is an :class:`ImageDataset`: labels in memory, images read by
index in batches (``load``). :class:`ArrayDataset` holds its images in memory;
:class:`ImageFolder` decodes a folder's files on access, so ImageNet-size folders stream;
:class:`StreamedDataset` reads any map-style ``Dataset`` (torchvision's too) item by item.

>>> from ddmetrics.data import load
>>> splits = load("digits", seed=0)          # train / val / test, normalised with train statistics
>>> splits.train.images.shape                # doctest: +SKIP
torch.Size([1293, 1, 8, 8])
>>> cifar = load("cifar10", root="data")     # the official python batches; its own test split  # doctest: +SKIP
"""
from ._base import ImageDataset, iterate_on_cpu, pixel_bounds, read_batches
from ._array import ArrayDataset, as_array_dataset, as_dataset, from_arrays, from_npz, stratified_split
from ._cifar import cifar_batches
from ._idx import idx_dataset, read_idx
from ._images import AnnotatedImageFolder, ImageFolder, image_folder
from ._load import Splits, check_source, dataset_names, load
from ._official import tiny_imagenet
from ._streamed import StreamedDataset
from ._svhn import svhn_mat

__all__ = ["AnnotatedImageFolder", "ArrayDataset", "ImageDataset", "ImageFolder", "Splits", "StreamedDataset",
           "as_array_dataset", "as_dataset", "check_source", "cifar_batches", "dataset_names", "from_arrays",
           "from_npz", "idx_dataset", "image_folder", "iterate_on_cpu", "load", "pixel_bounds", "read_batches",
           "read_idx", "stratified_split", "svhn_mat", "tiny_imagenet"]
